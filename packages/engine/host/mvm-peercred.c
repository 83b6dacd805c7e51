/*
 * mvm-peercred: prints the credentials the kernel recorded for the peer of the connected Unix
 * socket on fd 3 (the daemon passes an accepted connection there), as of the peer's connect():
 *
 *   pid=<pid>
 *   uid=<uid>
 *   gid=<gid>
 *   groups=<gid>,<gid>,...     (absent when the kernel has no SO_PEERGROUPS)
 *
 * Exit 0 on success; 1 with a message on stderr when fd 3 is not a Unix socket with a peer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

static gid_t groups[65536];

int main(void) {
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(3, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) {
    fprintf(stderr, "mvm-peercred: SO_PEERCRED on fd 3: %s\n", strerror(errno));
    return 1;
  }
  printf("pid=%d\nuid=%u\ngid=%u\n", (int)cred.pid, (unsigned)cred.uid, (unsigned)cred.gid);
  socklen_t glen = sizeof groups;
  if (getsockopt(3, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0) {
    printf("groups=");
    for (size_t i = 0; i < glen / sizeof(gid_t); i++) printf(i == 0 ? "%u" : ",%u", (unsigned)groups[i]);
    printf("\n");
  }
  return fflush(stdout) == 0 ? 0 : 1;
}
