/*
 * mvm-guest: the things the VM guest's /init needs that busybox cannot do.
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
 *       This is the filter step of `sandbox` alone (which /init uses), runnable without root.
 *
 *   mvm-guest sandbox FILTER_FILE ROOT WORKDIR UID -- PROGRAM [ARG...]
 *       Starts the sandbox's agent with the posture of the namespace tier. Run as root; in order:
 *       reads FILTER_FILE as `seccomp` does; makes a new pid namespace and forks its first
 *       process, which mounts a /proc of that namespace at ROOT/proc, chroots into ROOT, changes
 *       to WORKDIR (a path in ROOT), locks the securebits (no root privilege, no kept or ambient
 *       capabilities), empties the capability bounding set, clears the supplementary groups,
 *       switches every uid and gid to UID, empties the inheritable set (so permitted, effective,
 *       inheritable, ambient and bounding sets are all empty, which it checks), sets
 *       no_new_privs and installs the filter. That process stays pid 1 of the namespace, an
 *       unprivileged reaper of orphans, and forks PROGRAM as pid 2. When PROGRAM ends, the reaper
 *       exits with its status (the kernel then kills whatever else still runs in the namespace),
 *       and so does the command, which waits for the reaper outside the namespace. No root
 *       process of the guest (init, kernel threads) is visible in the new /proc.
 *       UID is a decimal number from 1 to 2147483646; it is used as the gid too.
 *
 * Every failure prints one line "mvm-guest: <what>: <reason>" to stderr.
 *
 * Exit status:
 *   0    reseed done
 *   64   usage error: unknown command, wrong arguments, malformed or wrongly sized HEX, bad UID
 *   65   FILTER_FILE is not a valid filter: not a regular file, empty, size not a multiple
 *        of 8, more than 4096 instructions, or rejected by the kernel as invalid (EINVAL)
 *   66   FILTER_FILE cannot be opened or read
 *   71   a system call failed for another reason
 *   77   permission denied: the caller lacks CAP_SYS_ADMIN (reseed, sandbox), or the kernel
 *        refused the filter (EPERM/EACCES)
 *   126  PROGRAM exists but cannot be executed (the filter is already installed)
 *   127  PROGRAM was not found (the filter is already installed)
 * On success, `seccomp` does not return: its status is PROGRAM's. `sandbox` exits with PROGRAM's
 * exit status, or 128 + the signal number when a signal ended it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/random.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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
    "       mvm-guest seccomp FILTER_FILE -- PROGRAM [ARG...]\n"
    "       mvm-guest sandbox FILTER_FILE ROOT WORKDIR UID -- PROGRAM [ARG...]\n";

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

/* Sets no_new_privs and installs the filter. Returns 0, or prints the problem and returns the exit status. */
static int install_filter(const char *path, struct sock_filter *insns, unsigned short count) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) != 0) {
    return fail_errno("cannot set no_new_privs", errno, EXIT_OS_ERROR);
  }
  struct sock_fprog prog = { .len = count, .filter = insns };
  if (syscall(SYS_seccomp, (long)SECCOMP_SET_MODE_FILTER, 0L, &prog) != 0) {
    int err = errno;
    if (err == EINVAL) {
      fprintf(stderr, "mvm-guest: cannot install the seccomp filter from \"%s\": the kernel rejected it as invalid\n", path);
      return EXIT_BAD_FILTER;
    }
    return fail_errno("cannot install the seccomp filter", err, permission_or(err, EXIT_OS_ERROR));
  }
  return 0;
}

/* execv()s argv[0] with argv; returns (after printing why) only when that fails. */
static int exec_program(char **argv) {
  execv(argv[0], argv);
  int err = errno;
  fprintf(stderr, "mvm-guest: cannot execute \"%s\": %s\n", argv[0], strerror(err));
  return err == ENOENT || err == ENOTDIR ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE;
}

static int cmd_seccomp(int argc, char **argv) {
  if (argc < 5 || strcmp(argv[3], "--") != 0) return usage("seccomp takes FILTER_FILE -- PROGRAM [ARG...]");
  if (argv[4][0] == '\0') return usage("PROGRAM is empty");

  static struct sock_filter insns[FILTER_MAX_INSNS];
  unsigned short count = 0;
  int status = read_filter(argv[2], insns, &count);
  if (status != 0) return status;
  status = install_filter(argv[2], insns, count);
  if (status != 0) return status;
  return exec_program(&argv[4]);
}

/* The exit status that reports how a child ended: its exit code, or 128 + the signal. */
static int status_of(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return EXIT_OS_ERROR;
}

/* Waits for child `pid`, reaping any other child on the way; returns its status_of(). */
static int wait_for(pid_t pid) {
  for (;;) {
    int wstatus = 0;
    pid_t got = wait(&wstatus);
    if (got == pid) return status_of(wstatus);
    if (got < 0 && errno != EINTR) return fail_errno("cannot wait for the program", errno, EXIT_OS_ERROR);
  }
}

/* Parses a uid from 1 to 2147483646; returns -1 when `text` is not one. */
static long parse_uid(const char *text) {
  if (text[0] == '\0' || strlen(text) > 10) return -1;
  long value = 0;
  for (const char *c = text; *c != '\0'; c++) {
    if (*c < '0' || *c > '9') return -1;
    value = value * 10 + (*c - '0');
  }
  return value >= 1 && value <= 2147483646L ? value : -1;
}

/*
 * Drops every privilege for good: securebits locked, bounding set emptied, no supplementary
 * groups, all uids and gids `id`, inheritable set emptied; then checks that no capability is
 * left in any set. Returns 0, or prints the problem and returns the exit status.
 */
static int drop_privileges(uid_t id) {
  const unsigned long securebits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                                   SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
  if (prctl(PR_SET_SECUREBITS, securebits, 0L, 0L, 0L) != 0) {
    return fail_errno("cannot lock the securebits", errno, permission_or(errno, EXIT_OS_ERROR));
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0L, 0L, 0L) != 0) {
    return fail_errno("cannot clear the ambient capabilities", errno, EXIT_OS_ERROR);
  }
  for (unsigned long cap = 0; prctl(PR_CAPBSET_READ, cap, 0L, 0L, 0L) >= 0; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0L, 0L, 0L) != 0) {
      return fail_errno("cannot empty the capability bounding set", errno, permission_or(errno, EXIT_OS_ERROR));
    }
  }
  if (setgroups(0, NULL) != 0) return fail_errno("cannot clear the supplementary groups", errno, permission_or(errno, EXIT_OS_ERROR));
  if (setresgid(id, id, id) != 0) return fail_errno("cannot set the gid", errno, permission_or(errno, EXIT_OS_ERROR));
  if (setresuid(id, id, id) != 0) return fail_errno("cannot set the uid", errno, permission_or(errno, EXIT_OS_ERROR));

  struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &header, data) != 0) return fail_errno("cannot empty the capability sets", errno, EXIT_OS_ERROR);

  /* Fail closed: every set must read back empty. */
  if (syscall(SYS_capget, &header, data) != 0) return fail_errno("cannot read the capability sets", errno, EXIT_OS_ERROR);
  for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
    if (data[i].effective != 0 || data[i].permitted != 0 || data[i].inheritable != 0) {
      fprintf(stderr, "mvm-guest: capabilities left after dropping them\n");
      return EXIT_OS_ERROR;
    }
  }
  for (unsigned long cap = 0; prctl(PR_CAPBSET_READ, cap, 0L, 0L, 0L) >= 0; cap++) {
    if (prctl(PR_CAPBSET_READ, cap, 0L, 0L, 0L) != 0 || prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0L, 0L) != 0) {
      fprintf(stderr, "mvm-guest: capability %lu left in the bounding or ambient set\n", cap);
      return EXIT_OS_ERROR;
    }
  }
  return 0;
}

/* pid 1 of the new namespace: mounts its /proc, enters ROOT, drops privileges, runs PROGRAM as pid 2 and reaps. */
static int sandbox_init(char **argv, uid_t id, struct sock_filter *insns, unsigned short count) {
  const char *filter = argv[2], *root = argv[3], *workdir = argv[4];
  char proc[4096];
  if ((size_t)snprintf(proc, sizeof proc, "%s/proc", root) >= sizeof proc) return usage("ROOT is too long");
  if (mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
    return fail_path("cannot mount /proc at", proc, errno, permission_or(errno, EXIT_OS_ERROR));
  }
  if (chroot(root) != 0) return fail_path("cannot change root to", root, errno, permission_or(errno, EXIT_OS_ERROR));
  if (chdir(workdir) != 0) return fail_path("cannot change directory to", workdir, errno, EXIT_OS_ERROR);
  int status = drop_privileges(id);
  if (status != 0) return status;
  status = install_filter(filter, insns, count);
  if (status != 0) return status;

  pid_t program = fork();
  if (program < 0) return fail_errno("cannot fork the program", errno, EXIT_OS_ERROR);
  if (program == 0) _exit(exec_program(&argv[7]));
  return wait_for(program);
}

static int cmd_sandbox(int argc, char **argv) {
  if (argc < 8 || strcmp(argv[6], "--") != 0) return usage("sandbox takes FILTER_FILE ROOT WORKDIR UID -- PROGRAM [ARG...]");
  if (argv[3][0] != '/' || argv[4][0] != '/') return usage("ROOT and WORKDIR must be absolute paths");
  if (argv[7][0] == '\0') return usage("PROGRAM is empty");
  long id = parse_uid(argv[5]);
  if (id < 0) {
    fprintf(stderr, "mvm-guest: bad UID \"%s\": must be a number from 1 to 2147483646\n%s", argv[5], usage_text);
    return EXIT_USAGE;
  }

  static struct sock_filter insns[FILTER_MAX_INSNS];
  unsigned short count = 0;
  int status = read_filter(argv[2], insns, &count);
  if (status != 0) return status;

  if (unshare(CLONE_NEWPID) != 0) return fail_errno("cannot make a pid namespace", errno, permission_or(errno, EXIT_OS_ERROR));
  pid_t init = fork();
  if (init < 0) return fail_errno("cannot fork the namespace's first process", errno, EXIT_OS_ERROR);
  if (init == 0) {
    _exit(sandbox_init(argv, (uid_t)id, insns, count));
  }
  return wait_for(init);
}

int main(int argc, char **argv) {
  if (argc < 2) return usage("no command given");
  if (strcmp(argv[1], "reseed") == 0) return cmd_reseed(argc, argv);
  if (strcmp(argv[1], "seccomp") == 0) return cmd_seccomp(argc, argv);
  if (strcmp(argv[1], "sandbox") == 0) return cmd_sandbox(argc, argv);
  fprintf(stderr, "mvm-guest: unknown command \"%s\"\n%s", argv[1], usage_text);
  return EXIT_USAGE;
}
