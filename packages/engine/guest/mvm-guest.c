/*
 * mvm-guest: the two things the VM guest's /init needs that busybox cannot do.
 *
 *   mvm-guest reseed HEX
 *       Mixes the seed HEX (32..256 bytes as 64..512 hex digits) into the kernel's input pool,
 *       credited as entropy (ioctl RNDADDENTROPY), then makes the kernel reseed its CRNG from
 *       the pool at once (ioctl RNDRESEEDCRNG). Both ioctls need CAP_SYS_ADMIN. A VM restored
 *       from a saved image runs this so that sandboxes started from one image do not share
 *       random streams.
 *
 *   mvm-guest seccomp FILTER_FILE -- PROGRAM [ARG...]
 *       Reads a raw classic-BPF program (struct sock_filter[], 8 bytes per instruction,
 *       1..4096 instructions) from FILTER_FILE, sets no_new_privs, installs the program with
 *       seccomp(SECCOMP_SET_MODE_FILTER), then execv()s PROGRAM with argv[0] = PROGRAM and the
 *       given ARGs in the current environment. PROGRAM is a path; PATH is not searched.
 *
 * Every failure prints one line "mvm-guest: <what>: <reason>" to stderr.
 *
 * Exit status:
 *   0    reseed done
 *   64   usage error: unknown command, wrong arguments, malformed or wrongly sized HEX
 *   65   FILTER_FILE is not a valid filter: not a regular file, empty, size not a multiple
 *        of 8, more than 4096 instructions, or rejected by the kernel as invalid (EINVAL)
 *   66   FILTER_FILE cannot be opened or read
 *   71   a system call failed for another reason
 *   77   permission denied: the caller lacks CAP_SYS_ADMIN (reseed), or the kernel refused the
 *        filter (EPERM/EACCES)
 *   126  PROGRAM exists but cannot be executed (the filter is already installed)
 *   127  PROGRAM was not found (the filter is already installed)
 * On success, `seccomp` does not return: its status is PROGRAM's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/random.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

enum {
  EXIT_USAGE = 64,
  EXIT_BAD_FILTER = 65,
  EXIT_NO_INPUT = 66,
  EXIT_OS_ERROR = 71,
  EXIT_NO_PERMISSION = 77,
  EXIT_CANNOT_EXECUTE = 126,
  EXIT_NOT_FOUND = 127,
};

enum {
  SEED_MIN_BYTES = 32,
  SEED_MAX_BYTES = 256,
  FILTER_MAX_INSNS = 4096,
};

static const char usage_text[] =
    "usage: mvm-guest reseed HEX\n"
    "       mvm-guest seccomp FILTER_FILE -- PROGRAM [ARG...]\n";

static int usage(const char *problem) {
  fprintf(stderr, "mvm-guest: %s\n%s", problem, usage_text);
  return EXIT_USAGE;
}

/* Prints "mvm-guest: what: strerror(err)" and returns the exit status for err. */
static int fail_errno(const char *what, int err, int status) {
  fprintf(stderr, "mvm-guest: %s: %s\n", what, strerror(err));
  return status;
}

/* Prints "mvm-guest: what \"path\": strerror(err)" and returns status. */
static int fail_path(const char *what, const char *path, int err, int status) {
  fprintf(stderr, "mvm-guest: %s \"%s\": %s\n", what, path, strerror(err));
  return status;
}

static int permission_or(int err, int status) {
  return (err == EPERM || err == EACCES) ? EXIT_NO_PERMISSION : status;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* struct rand_pool_info followed by room for the largest seed, suitably aligned. */
union seed_request {
  struct rand_pool_info info;
  unsigned char bytes[sizeof(struct rand_pool_info) + SEED_MAX_BYTES];
};

static int cmd_reseed(int argc, char **argv) {
  if (argc != 3) return usage("reseed takes exactly one argument");
  const char *hex = argv[2];
  size_t digits = strlen(hex);
  if (digits % 2 != 0 || digits < 2 * SEED_MIN_BYTES || digits > 2 * SEED_MAX_BYTES) {
    fprintf(stderr, "mvm-guest: seed has %zu hex digits: must be an even number from %d to %d\n", digits,
            2 * SEED_MIN_BYTES, 2 * SEED_MAX_BYTES);
    return EXIT_USAGE;
  }

  static union seed_request request;
  unsigned char *seed = request.bytes + offsetof(struct rand_pool_info, buf);
  size_t length = digits / 2;
  for (size_t i = 0; i < length; i++) {
    int high = hex_value(hex[2 * i]);
    int low = hex_value(hex[2 * i + 1]);
    if (high < 0 || low < 0) {
      explicit_bzero(&request, sizeof request);
      explicit_bzero(argv[2], digits);
      fprintf(stderr, "mvm-guest: seed is not hex: bad digit at offset %zu\n", high < 0 ? 2 * i : 2 * i + 1);
      return EXIT_USAGE;
    }
    seed[i] = (unsigned char)(high << 4 | low);
  }
  /* The seed also arrived in argv: clear it there so /proc/<pid>/cmdline no longer shows it. */
  explicit_bzero(argv[2], digits);
  request.info.entropy_count = (int)(length * 8);
  request.info.buf_size = (int)length;

  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    explicit_bzero(&request, sizeof request);
    return fail_errno("cannot open \"/dev/urandom\"", err, EXIT_OS_ERROR);
  }
  int added = ioctl(fd, RNDADDENTROPY, &request.info);
  int err = errno;
  explicit_bzero(&request, sizeof request);
  if (added != 0) {
    close(fd);
    return fail_errno("cannot add the seed (RNDADDENTROPY)", err, permission_or(err, EXIT_OS_ERROR));
  }
  if (ioctl(fd, RNDRESEEDCRNG) != 0) {
    err = errno;
    close(fd);
    return fail_errno("cannot reseed the CRNG (RNDRESEEDCRNG)", err, permission_or(err, EXIT_OS_ERROR));
  }
  if (close(fd) != 0) return fail_errno("cannot close \"/dev/urandom\"", errno, EXIT_OS_ERROR);
  return 0;
}

/*
 * Reads the whole filter file into insns. Returns 0 and sets *count, or prints the problem and
 * returns the exit status.
 */
static int read_filter(const char *path, struct sock_filter *insns, unsigned short *count) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return fail_path("cannot open the filter file", path, errno, EXIT_NO_INPUT);

  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return fail_path("cannot stat the filter file", path, err, EXIT_NO_INPUT);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    fprintf(stderr, "mvm-guest: filter file \"%s\" is not a regular file\n", path);
    return EXIT_BAD_FILTER;
  }

  /* Reads up to one byte past the limit so that an oversized file is seen whatever fstat said. */
  const size_t capacity = FILTER_MAX_INSNS * sizeof(struct sock_filter);
  unsigned char *buffer = (unsigned char *)insns;
  size_t total = 0;
  unsigned char extra;
  for (;;) {
    unsigned char *into = total < capacity ? buffer + total : &extra;
    size_t room = total < capacity ? capacity - total : 1;
    ssize_t got = read(fd, into, room);
    if (got < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return fail_path("cannot read the filter file", path, err, EXIT_NO_INPUT);
    }
    if (got == 0) break;
    total += (size_t)got;
    if (total > capacity) break;
  }
  if (close(fd) != 0) return fail_path("cannot close the filter file", path, errno, EXIT_NO_INPUT);

  if (total == 0) {
    fprintf(stderr, "mvm-guest: filter file \"%s\" is empty\n", path);
    return EXIT_BAD_FILTER;
  }
  if (total > capacity) {
    fprintf(stderr, "mvm-guest: filter file \"%s\" is too big: more than %d instructions\n", path, FILTER_MAX_INSNS);
    return EXIT_BAD_FILTER;
  }
  if (total % sizeof(struct sock_filter) != 0) {
    fprintf(stderr, "mvm-guest: filter file \"%s\" has %zu bytes: not a multiple of %zu\n", path, total,
            sizeof(struct sock_filter));
    return EXIT_BAD_FILTER;
  }
  *count = (unsigned short)(total / sizeof(struct sock_filter));
  return 0;
}

static int cmd_seccomp(int argc, char **argv) {
  if (argc < 5 || strcmp(argv[3], "--") != 0) return usage("seccomp takes FILTER_FILE -- PROGRAM [ARG...]");
  const char *program = argv[4];
  if (program[0] == '\0') return usage("PROGRAM is empty");

  static struct sock_filter insns[FILTER_MAX_INSNS];
  unsigned short count = 0;
  int status = read_filter(argv[2], insns, &count);
  if (status != 0) return status;

  if (prctl(PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) != 0) {
    return fail_errno("cannot set no_new_privs", errno, EXIT_OS_ERROR);
  }
  struct sock_fprog prog = { .len = count, .filter = insns };
  if (syscall(SYS_seccomp, (long)SECCOMP_SET_MODE_FILTER, 0L, &prog) != 0) {
    int err = errno;
    if (err == EINVAL) {
      fprintf(stderr, "mvm-guest: cannot install the seccomp filter from \"%s\": the kernel rejected it as invalid\n", argv[2]);
      return EXIT_BAD_FILTER;
    }
    return fail_errno("cannot install the seccomp filter", err, permission_or(err, EXIT_OS_ERROR));
  }

  execv(program, &argv[4]);
  int err = errno;
  fprintf(stderr, "mvm-guest: cannot execute \"%s\": %s\n", program, strerror(err));
  return err == ENOENT || err == ENOTDIR ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage("no command given");
  if (strcmp(argv[1], "reseed") == 0) return cmd_reseed(argc, argv);
  if (strcmp(argv[1], "seccomp") == 0) return cmd_seccomp(argc, argv);
  fprintf(stderr, "mvm-guest: unknown command \"%s\"\n%s", argv[1], usage_text);
  return EXIT_USAGE;
}
