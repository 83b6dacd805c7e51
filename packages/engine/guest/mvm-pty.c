/*
 * mvm-pty: the agent's terminal helper, shipped in the agent runtime (/.mvm/bin/mvm-pty). Node.js
 * can open /dev/ptmx but cannot make the ioctl calls a terminal needs; this program makes them.
 * The agent opens the master side itself and passes it as fd 3; it never gives the master to the
 * workload.
 *
 *   mvm-pty exec COLS ROWS -- ARGV...
 *     Unlocks the master on fd 3, starts a session (unless the caller already made this process
 *     a session leader), opens the slave side as its controlling terminal with the given size,
 *     makes it fds 0, 1 and 2, closes fd 3 and executes ARGV (looked up on PATH). The process
 *     keeps its pid, so the agent's process-group signals and exit status apply to the workload.
 *     Exit 127 (with a message on the terminal) when ARGV cannot be executed, 126 when the
 *     terminal cannot be set up (message on the original stderr).
 *
 *   mvm-pty resize COLS ROWS
 *     Sets the window size of the terminal whose master is fd 3; the kernel sends SIGWINCH to
 *     the terminal's foreground process group. Exit 0, or 1 with a message on stderr.
 *
 * COLS and ROWS are decimal integers from 1 to 65535.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#define MASTER_FD 3

static int parse_dim(const char *text, unsigned short *out) {
  char *end = NULL;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < 1 || value > 65535) return -1;
  *out = (unsigned short)value;
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: mvm-pty exec COLS ROWS -- ARGV... | mvm-pty resize COLS ROWS\n");
  return 2;
}

static int fail(const char *what) {
  fprintf(stderr, "mvm-pty: %s: %s\n", what, strerror(errno));
  return 126;
}

int main(int argc, char **argv) {
  if (argc < 4) return usage();
  struct winsize size;
  memset(&size, 0, sizeof size);
  if (parse_dim(argv[2], &size.ws_col) != 0 || parse_dim(argv[3], &size.ws_row) != 0) return usage();

  if (strcmp(argv[1], "resize") == 0) {
    if (argc != 4) return usage();
    if (ioctl(MASTER_FD, TIOCSWINSZ, &size) != 0) {
      fprintf(stderr, "mvm-pty: cannot set the window size: %s\n", strerror(errno));
      return 1;
    }
    return 0;
  }
  if (strcmp(argv[1], "exec") != 0 || argc < 6 || strcmp(argv[4], "--") != 0) return usage();

  if (grantpt(MASTER_FD) != 0 || unlockpt(MASTER_FD) != 0) return fail("cannot unlock the terminal on fd 3");
  char name[64];
  if (ptsname_r(MASTER_FD, name, sizeof name) != 0) return fail("cannot name the terminal on fd 3");
  if (getsid(0) != getpid() && setsid() < 0) return fail("cannot start a session");
  int slave = open(name, O_RDWR);
  if (slave < 0) return fail("cannot open the terminal");
  if (ioctl(slave, TIOCSCTTY, 0) != 0) return fail("cannot make the terminal the controlling terminal");
  if (ioctl(slave, TIOCSWINSZ, &size) != 0) return fail("cannot set the window size");
  if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0) return fail("cannot attach the terminal");
  if (slave > 2) close(slave);
  close(MASTER_FD);

  execvp(argv[5], &argv[5]);
  int err = errno;
  fprintf(stderr, "mvm-pty: cannot execute \"%s\": %s\r\n", argv[5], strerror(err));
  return 127;
}
