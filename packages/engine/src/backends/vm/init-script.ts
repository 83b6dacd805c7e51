/**
 * The guest's /init: a busybox shell script that stays pid 1 for the life of the VM.
 *
 * Boot, in order:
 * 1. mounts /proc, /sys and /dev, loads the kernel modules, and finds the three disks by volume
 *    label and the three virtio-serial ports by name (agent channel, control port, egress relay);
 * 2. opens the image disk and the agent runtime disk through dm-verity (`dmsetup`, table built
 *    from the root hashes on the kernel command line, `panic_on_corruption`: one bad block read
 *    and the kernel panics, which QEMU turns into an exit) and mounts them read-only at /newroot
 *    and /newroot/.mvm; mounts the writable per-sandbox disk at /newroot/work, a size-capped
 *    tmpfs at /newroot/tmp and a /dev holding only harmless devices, the agent's two ports
 *    (channel and relay, both owned by the agent's uid, mode 0600) and a devpts instance of its
 *    own at /dev/pts (never the console's); adds the sandbox user (`user`, home /home/user on a
 *    tmpfs at /home) to copies of /etc/passwd and /etc/group bound read-only over the image's
 *    when they lack its uid; every mount of the new root is nosuid and nodev;
 * 3. hardens kernel-wide knobs (no module loading from here on, no kexec, no unprivileged bpf,
 *    perf or userfaultfd, no user namespaces), brings up the loopback interface (the only one:
 *    egress goes through the relay port), and makes a cgroup for the sandbox;
 * 4. starts the agent in that cgroup with the posture of the namespace tier, through
 *    `mvm-guest sandbox`: in a new pid namespace whose /proc (mounted at /newroot/proc) shows no
 *    process of the guest's root, chrooted into /newroot, as an unprivileged uid, with every
 *    capability set empty (bounding set included), no_new_privs and the seccomp filter of the
 *    namespace tier; pid 1 of that namespace is the helper's unprivileged reaper, the agent
 *    pid 2. The agent loads, says "ready" and waits for the host's start line before its hello;
 * 5. serves the control port (root only, never visible in the new root): the host sends a fresh
 *    RNG seed (after a restore from a saved VM every sandbox must get its own), the wall clock
 *    (a restored guest wakes up at the time it was saved), the limits, the trust bundle of a
 *    sandbox with mediated secrets (see TRUST_REQUEST below), and asks for OOM-kill counts.
 * When the agent exits, or any step fails, the VM reboots, which QEMU (-no-reboot) turns into an
 * exit. Failures print one "mvm-init: ..." line on the console first.
 *
 * Kernel command line parameters read (values checked by pattern before use): mvm.uid,
 * mvm.verity_root and mvm.verity_agent (`<data blocks>:<hash start block>:<root hash>:<salt>`).
 */

import { SYSTEM_TRUST_BUNDLE_PATH, TRUST_BUNDLE_PATH } from "@mvm/protocol";
import { agentRuntimeCommand } from "../../runtime/agent-runtime.js";

/** Where the agent finds its virtio-serial port in the new root. */
export const GUEST_AGENT_PORT = "/dev/vport0p1";
/** Where the agent finds its egress relay port in the new root (its `--relay` argument). */
export const GUEST_RELAY_PORT = "/dev/vport0p3";

/** Names of the virtio-serial ports, as QEMU's `virtserialport,name=` sets them. */
export const AGENT_PORT_NAME = "mvm.agent";
export const CONTROL_PORT_NAME = "mvm.ctl";
export const RELAY_PORT_NAME = "mvm.relay";

/**
 * The trust bundle request on the control port: the line `trust <base64 bytes> <sha256 hex of the
 * PEM>`, then exactly that many bytes of base64 (no newline), answered `ok trust` or `err trust`.
 * The init reads the payload with `head -c`, so its content never reaches the line parser.
 */
export const TRUST_REQUEST = "trust";
/** Largest trust bundle the init accepts, bytes of PEM (a full system bundle is about 220 KiB). */
export const MAX_TRUST_BUNDLE_BYTES = 1024 * 1024;
/** Largest base64 payload of a trust request: MAX_TRUST_BUNDLE_BYTES encoded. */
export const MAX_TRUST_PAYLOAD_BYTES = Math.ceil(MAX_TRUST_BUNDLE_BYTES / 3) * 4;

/** Volume labels the init looks the disks up by. */
export const ROOT_DISK_LABEL = "mvm-root";
export const AGENT_DISK_LABEL = "mvm-agent";
export const WORK_DISK_LABEL = "mvm-work";

/** Group of new terminals' slave sides in the guest's devpts: `tty` in Debian-family images. */
export const GUEST_TTY_GID = 5;

/** Name and home of the sandbox user the init adds to images without an entry for its uid (as the namespace tier does). */
export const SANDBOX_USER = "user";
export const SANDBOX_HOME = "/home/user";
/** Largest image /etc/passwd or /etc/group the init copies to add the user, bytes. */
export const MAX_IDENTITY_DB_BYTES = 1024 * 1024;

/** Paths inside the initramfs. */
export const GUEST_HELPER_PATH = "/bin/mvm-guest";
export const GUEST_SECCOMP_PATH = "/etc/seccomp.bpf";
export const GUEST_DMSETUP_PATH = "/sbin/dmsetup";

/** What /init prints and then powers off, when the kernel command line has mvm.bench_stop=init. */
export const BENCH_INIT_MARKER = "mvm-init: reached";

/** Lines the agent and the init write, and the line the host writes to start the agent (one definition, in @mvm/protocol). */
export { AGENT_READY_LINE, AGENT_START_LINE } from "@mvm/protocol";

/** The agent runtime's command with the channel switched from stdio to the virtio port, and the relay port. */
function agentArgv(): string[] {
  const command = agentRuntimeCommand({ relayPath: GUEST_RELAY_PORT });
  const argv = [...command.map((arg) => (arg === "stdio" ? GUEST_AGENT_PORT : arg)), "--await-start"];
  for (const arg of argv) {
    if (!/^[A-Za-z0-9_./-]+$/.test(arg)) throw new TypeError(`agent argument ${JSON.stringify(arg)} needs shell quoting`);
  }
  return argv;
}

/** The trust bundle's directory; the init mounts the bundle's tmpfs on its parent, /run. */
const TRUST_DIR = TRUST_BUNDLE_PATH.slice(0, TRUST_BUNDLE_PATH.lastIndexOf("/"));

/**
 * A shell condition: the image has the system bundle as a regular file, and neither it nor a
 * directory above it is a symlink.
 */
function systemBundleChecks(): string {
  const parts = SYSTEM_TRUST_BUNDLE_PATH.split("/").slice(1);
  const paths = parts.map((_, i) => `/newroot/${parts.slice(0, i + 1).join("/")}`);
  return [...paths.map((path) => `[ ! -L ${path} ]`), `[ -f ${paths.at(-1)!} ]`].join(" && ");
}

/** Kernel-wide knobs set before the agent starts. */
const GUEST_SYSCTLS: ReadonlyArray<readonly [string, string]> = [
  ["kernel.kexec_load_disabled", "1"],
  ["kernel.dmesg_restrict", "1"],
  ["kernel.kptr_restrict", "2"],
  ["kernel.perf_event_paranoid", "3"],
  ["kernel.unprivileged_bpf_disabled", "1"],
  ["kernel.sysrq", "0"],
  ["vm.unprivileged_userfaultfd", "0"],
  ["user.max_user_namespaces", "0"],
  // Last: irreversible until the VM ends.
  ["kernel.modules_disabled", "1"],
];

/** Renders /init for modules loaded from /modules/<name>.ko in `moduleOrder`. */
export function renderInitScript(moduleOrder: readonly string[]): string {
  for (const path of [TRUST_BUNDLE_PATH, SYSTEM_TRUST_BUNDLE_PATH]) {
    if (!/^(\/[a-z0-9._-]+)+$/.test(path)) throw new TypeError(`path ${JSON.stringify(path)} needs shell quoting`);
  }
  if (!/^\/run\/[a-z0-9._-]+$/.test(TRUST_DIR)) throw new TypeError(`trust bundle directory ${JSON.stringify(TRUST_DIR)} is not one level under /run`);
  for (const name of moduleOrder) {
    if (!/^[a-z0-9_]+$/.test(name)) throw new TypeError(`module name ${JSON.stringify(name)} is not a plain name`);
  }
  return `#!/bin/busybox sh
# mvm guest init (pid 1)
bb=/bin/busybox
fail() {
  $bb echo "mvm-init: $*" >/dev/console
  $bb sync
  $bb reboot -f
  while :; do $bb sleep 1; done
}
$bb mount -t proc -o nosuid,nodev,noexec proc /proc || fail "cannot mount /proc"
# Benchmarks boot the same kernel and initramfs only as far as here (mvm.bench_stop=init).
case " $($bb cat /proc/cmdline) " in
  *" mvm.bench_stop=init "*) $bb echo "${BENCH_INIT_MARKER}" >/dev/console; $bb reboot -f ;;
esac
$bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "cannot mount /sys"
$bb mount -t devtmpfs -o nosuid,noexec devtmpfs /dev || fail "cannot mount /dev"
exec </dev/null >/dev/console 2>&1

uid=1000; verity_root=; verity_agent=
for arg in $($bb cat /proc/cmdline); do
  case "$arg" in
    mvm.uid=*) uid="\${arg#*=}" ;;
    mvm.verity_root=*) verity_root="\${arg#*=}" ;;
    mvm.verity_agent=*) verity_agent="\${arg#*=}" ;;
  esac
done
case "$uid" in ''|*[!0-9]*) fail "bad mvm.uid $uid" ;; esac
[ "$uid" -gt 0 ] || fail "refusing to run the agent as uid $uid"

for m in ${moduleOrder.join(" ")}; do
  $bb insmod /modules/$m.ko || fail "cannot load module $m"
done

# Waits (up to 10 s) until the command in "$@" succeeds.
wait_until() {
  i=0
  until "$@"; do
    i=$((i + 1))
    [ $i -le 1000 ] || return 1
    $bb usleep 10000
  done
}
# Sets the variable named $1 to the /dev node of the virtio port named $2.
find_port() {
  for p in /sys/class/virtio-ports/*; do
    if [ -r "$p/name" ] && [ "$($bb cat "$p/name")" = "$2" ] && [ -e "/dev/\${p##*/}" ]; then
      eval "$1=/dev/\${p##*/}"
      return 0
    fi
  done
  return 1
}
find_disks() {
  root_disk=$($bb findfs LABEL=${ROOT_DISK_LABEL} 2>/dev/null) &&
  agent_disk=$($bb findfs LABEL=${AGENT_DISK_LABEL} 2>/dev/null) &&
  work_disk=$($bb findfs LABEL=${WORK_DISK_LABEL} 2>/dev/null)
}
wait_until find_disks || fail "no disks labelled ${ROOT_DISK_LABEL}, ${AGENT_DISK_LABEL} and ${WORK_DISK_LABEL}"
wait_until find_port port ${AGENT_PORT_NAME} || fail "no virtio port named ${AGENT_PORT_NAME}"
wait_until find_port ctl ${CONTROL_PORT_NAME} || fail "no virtio port named ${CONTROL_PORT_NAME}"
wait_until find_port relay ${RELAY_PORT_NAME} || fail "no virtio port named ${RELAY_PORT_NAME}"

# open_verity NAME DEVICE PARAMS: a read-only dm-verity device /dev/mapper/NAME over DEVICE,
# whose hash tree follows the data on the same device.
open_verity() {
  case "$3" in
    [0-9]*:[0-9]*:[0-9a-f]*:[0-9a-f]*) ;;
    *) fail "bad verity parameters for $1" ;;
  esac
  old_ifs=$IFS; IFS=:
  set -- "$1" "$2" $3
  IFS=$old_ifs
  case "$3$4" in *[!0-9]*) fail "bad verity block counts for $1" ;; esac
  case "$5$6" in *[!0-9a-f]*) fail "bad verity hash for $1" ;; esac
  [ \${#5} -eq 64 ] || fail "bad verity root hash length for $1"
  DM_DISABLE_UDEV=1 ${GUEST_DMSETUP_PATH} create "$1" --readonly --noudevsync \\
    --table "0 $(($3 * 8)) verity 1 $2 $2 4096 4096 $3 $4 sha256 $5 $6 1 panic_on_corruption" ||
    fail "cannot open $1 through dm-verity"
  [ -b /dev/mapper/$1 ] || DM_DISABLE_UDEV=1 ${GUEST_DMSETUP_PATH} mknodes "$1" || fail "no device node for $1"
}
open_verity root "$root_disk" "$verity_root"
open_verity agent "$agent_disk" "$verity_agent"

$bb mount -t ext4 -o ro,nosuid,nodev,noload /dev/mapper/root /newroot || fail "cannot mount the image disk"
$bb mount -t ext4 -o ro,nosuid,nodev,noload /dev/mapper/agent /newroot/.mvm || fail "cannot mount the agent runtime disk"
$bb mount -t ext4 -o nosuid,nodev "$work_disk" /newroot/work || fail "cannot mount the work disk"
$bb mount -t tmpfs -o nosuid,nodev,size=16m,mode=1777 tmpfs /newroot/tmp || fail "cannot mount /tmp"
$bb mount -t tmpfs -o nosuid,noexec,size=64k,mode=0755 tmpfs /newroot/dev || fail "cannot mount the new /dev"
$bb cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /newroot/dev/ || fail "cannot populate /dev"
$bb cp -a "$port" /newroot${GUEST_AGENT_PORT} || fail "cannot add the agent port to /dev"
$bb chown $uid:$uid /newroot${GUEST_AGENT_PORT} && $bb chmod 0600 /newroot${GUEST_AGENT_PORT} || fail "cannot hand the port to the agent"
$bb cp -a "$relay" /newroot${GUEST_RELAY_PORT} || fail "cannot add the relay port to /dev"
$bb chown $uid:$uid /newroot${GUEST_RELAY_PORT} && $bb chmod 0600 /newroot${GUEST_RELAY_PORT} || fail "cannot hand the relay port to the agent"
$bb ln -s /proc/self/fd /newroot/dev/fd
# Terminals: a devpts instance of the sandbox's own (newinstance), so the new root sees only the
# terminals its agent opens; /dev/ptmx leads to this instance's multiplexer.
$bb mkdir -m 0755 /newroot/dev/pts || fail "cannot make /dev/pts"
$bb mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=${GUEST_TTY_GID},nosuid,noexec devpts /newroot/dev/pts || fail "cannot mount /dev/pts"
$bb ln -s pts/ptmx /newroot/dev/ptmx || fail "cannot add /dev/ptmx"

# The sandbox user: when the image's /etc/passwd (/etc/group) has no entry for the uid (gid), the
# new root sees a copy with "${SANDBOX_USER}" added, bind-mounted read-only over the image's file
# (the image disk is never written); a tmpfs at /home holds ${SANDBOX_HOME}, owned by the user.
# image_db FILE: FILE is a regular file of at most ${MAX_IDENTITY_DB_BYTES} bytes, no symlink on the way.
image_db() {
  [ -d /newroot/etc ] && [ ! -L /newroot/etc ] && [ -f "$1" ] && [ ! -L "$1" ] &&
    [ "$($bb wc -c < "$1")" -le ${MAX_IDENTITY_DB_BYTES} ]
}
# has_id FILE ID: some entry's third field is exactly ID.
has_id() {
  $bb awk -F: -v id="$2" '($3 "") == (id "") { found = 1 } END { exit !found }' "$1"
}
# add_entry NAME ENTRY: the image's /etc/NAME plus ENTRY on a line of its own, over /etc/NAME.
add_entry() {
  $bb mkdir -p -m 0755 /identity &&
  { $bb cat "/newroot/etc/$1" && if [ -s "/newroot/etc/$1" ] && [ -n "$($bb tail -c 1 "/newroot/etc/$1")" ]; then echo; fi &&
    echo "$2"; } > "/identity/$1" &&
  $bb chmod 0644 "/identity/$1" &&
  $bb mount -o bind "/identity/$1" "/newroot/etc/$1" &&
  $bb mount -o remount,bind,ro,nosuid,nodev,noexec "/newroot/etc/$1"
}
user_shell=/bin/sh
[ -e /newroot/bin/bash ] && user_shell=/bin/bash
if image_db /newroot/etc/passwd && ! has_id /newroot/etc/passwd $uid; then
  add_entry passwd "${SANDBOX_USER}:x:$uid:$uid:${SANDBOX_USER}:${SANDBOX_HOME}:$user_shell" || fail "cannot add the sandbox user to /etc/passwd"
fi
if image_db /newroot/etc/group && ! has_id /newroot/etc/group $uid; then
  add_entry group "${SANDBOX_USER}:x:$uid:" || fail "cannot add the sandbox user to /etc/group"
fi
home_tmpfs=
if [ -d /newroot/home ] && [ ! -L /newroot/home ]; then
  $bb mount -t tmpfs -o nosuid,nodev,size=16m,mode=0755 tmpfs /newroot/home &&
    $bb mkdir -m 0755 /newroot${SANDBOX_HOME} && $bb chown $uid:$uid /newroot${SANDBOX_HOME} || fail "cannot make ${SANDBOX_HOME}"
  home_tmpfs=1
fi

${GUEST_SYSCTLS.map(([k, v]) => `$bb sysctl -q -w ${k}=${v} >/dev/null || fail "cannot set ${k}"`).join("\n")}

$bb hostname sandbox || fail "cannot set the hostname"
$bb ip link set lo up || fail "cannot bring up the loopback interface"

cg=/sys/fs/cgroup
$bb mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 $cg || fail "cannot mount cgroup2"
echo "+memory +pids +cpu" > $cg/cgroup.subtree_control || fail "cannot enable cgroup controllers"
$bb mkdir $cg/sandbox || fail "cannot make the sandbox cgroup"

$bb sh -c 'ulimit -S -c 0 && ulimit -H -c 0 && echo $$ > /sys/fs/cgroup/sandbox/cgroup.procs && exec "$@"' agent \\
  $bb env -i HOME=/work PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \\
  ${GUEST_HELPER_PATH} sandbox ${GUEST_SECCOMP_PATH} /newroot /work $uid -- \\
  ${agentArgv().join(" ")} &
agent_pid=$!

# The control port: one request a line, one answer a line ("ok <request>" or "err <request>").
limit() {
  case "$2" in max) ;; ''|*[!0-9]*) return 1 ;; esac
  echo "$2" > $cg/sandbox/$1
}
do_seed() {
  case "$1" in ''|*[!0-9a-f]*) return 1 ;; esac
  ${GUEST_HELPER_PATH} reseed "$1"
}
do_clock() {
  case "$1" in ''|*[!0-9]*) return 1 ;; esac
  $bb date -u -s "@$1" >/dev/null
}
do_limits() {
  case "$4" in ''|*[!0-9]*) return 1 ;; esac
  case "$3" in max) cpu="max 100000" ;; ''|*[!0-9]*) return 1 ;; *) cpu="$3 100000" ;; esac
  limit memory.max "$1" && limit pids.max "$2" && echo "$cpu" > $cg/sandbox/cpu.max &&
    $bb mount -o remount,nosuid,nodev,size=$4m /newroot/tmp &&
    { [ -z "$home_tmpfs" ] || $bb mount -o remount,nosuid,nodev,size=$4m /newroot/home; }
}
do_start() {
  do_seed "$1" && do_clock "$2" && do_limits "$3" "$4" "$5" "$6"
}
# do_trust LENGTH SHA256: reads LENGTH bytes of base64 from the port (always, so the payload is
# never parsed as requests), then puts the decoded bundle on a read-only tmpfs over the image's
# /run and bind-mounts it over the system bundle when the image has that as a regular file (no
# symlink on the way: a link would resolve in the initramfs, not in the new root).
trust_done=
do_trust() {
  case "$1" in ''|*[!0-9]*) return 1 ;; esac
  [ "$1" -ge 4 ] && [ "$1" -le ${MAX_TRUST_PAYLOAD_BYTES} ] || return 1
  $bb head -c "$1" <&3 > /trust.b64 || return 1
  [ -z "$trust_done" ] && [ "$($bb wc -c < /trust.b64)" -eq "$1" ] || return 1
  case "$2" in *[!0-9a-f]*) return 1 ;; esac
  [ \${#2} -eq 64 ] || return 1
  [ -d /newroot/run ] && [ ! -L /newroot/run ] || return 1
  $bb mount -t tmpfs -o nosuid,nodev,noexec,size=${Math.ceil((MAX_TRUST_BUNDLE_BYTES * 2) / 1024)}k,mode=0755 tmpfs /newroot/run || return 1
  $bb mkdir -m 0755 /newroot${TRUST_DIR} &&
    $bb base64 -d < /trust.b64 > /newroot${TRUST_BUNDLE_PATH} &&
    $bb rm -f /trust.b64 &&
    [ "$($bb sha256sum < /newroot${TRUST_BUNDLE_PATH})" = "$2  -" ] &&
    $bb chmod 0444 /newroot${TRUST_BUNDLE_PATH} &&
    $bb mount -o remount,ro,nosuid,nodev,noexec /newroot/run || return 1
  sys=/newroot${SYSTEM_TRUST_BUNDLE_PATH}
  if ${systemBundleChecks()}; then
    $bb mount -o bind /newroot${TRUST_BUNDLE_PATH} $sys && $bb mount -o remount,bind,ro,nosuid,nodev,noexec $sys || return 1
  fi
  trust_done=1
}
do_drop_caches() {
  $bb sync && echo 3 > /proc/sys/vm/drop_caches
}
# answer NAME COMMAND...: runs the command and answers "ok NAME" or "err NAME".
answer() {
  name=$1; shift
  if "$@"; then echo "ok $name" >&3; else echo "err $name" >&3; fi
}
serve_control() {
  set -f
  exec 3<>"$ctl"
  while IFS= read -r line <&3; do
    set -- $line
    case "$1 $#" in
      "seed 2") answer seed do_seed "$2" ;;
      "clock 2") answer clock do_clock "$2" ;;
      "limits 5") answer limits do_limits "$2" "$3" "$4" "$5" ;;
      "start 7") shift; answer start do_start "$@" ;;
      "drop_caches 1") answer drop_caches do_drop_caches ;;
      "${TRUST_REQUEST} 3") answer ${TRUST_REQUEST} do_trust "$2" "$3" ;;
      "stats 1")
        n=$($bb sed -n 's/^oom_kill //p' $cg/sandbox/memory.events)
        echo "ok stats oom_kill=\${n:-0}" >&3 ;;
      *) echo "err unknown" >&3 ;;
    esac
  done
}
serve_control &

wait $agent_pid
$bb echo "mvm-init: agent exited with status $?"
$bb sync
$bb reboot -f
`;
}
