/**
 * The guest's /init: a busybox shell script that stays pid 1 for the life of the VM.
 *
 * It mounts /proc, /sys and /dev, loads the kernel modules in order, mounts the image disk
 * (found by its label) read-only at /newroot and the agent runtime disk (by label) read-only at
 * /newroot/.mvm, adds size-capped tmpfs /work and /tmp, a /proc and a small /dev holding only
 * the harmless character devices and the agent's port (found by its virtio port name), then starts the agent as an unprivileged
 * uid with no_new_privs, chrooted into /newroot. Every mount of the new root is nosuid and nodev.
 * When the agent exits (or any step fails) the VM reboots, which QEMU (-no-reboot) turns into an
 * exit.
 *
 * Kernel command line parameters read: mvm.work_mib, mvm.tmp_mib, mvm.uid (all decimal).
 */

import { agentRuntimeCommand } from "../../runtime/agent-runtime.js";

/** Where the agent finds its virtio-serial port in the new root. */
export const GUEST_AGENT_PORT = "/dev/vport0p1";

/** Name of the agent's virtio-serial port, as QEMU's `virtserialport,name=` sets it. */
export const AGENT_PORT_NAME = "mvm.agent";

/** Volume labels the init looks the two disks up by. */
export const ROOT_DISK_LABEL = "mvm-root";
export const AGENT_DISK_LABEL = "mvm-agent";

/** The agent runtime's command with the channel switched from stdio to the virtio port. */
function agentArgv(): string[] {
  const argv = agentRuntimeCommand().map((arg) => (arg === "stdio" ? GUEST_AGENT_PORT : arg));
  for (const arg of argv) {
    if (!/^[A-Za-z0-9_./-]+$/.test(arg)) throw new TypeError(`agent argument ${JSON.stringify(arg)} needs shell quoting`);
  }
  return argv;
}

/** Renders /init for modules loaded from /modules/<name>.ko in `moduleOrder`. */
export function renderInitScript(moduleOrder: readonly string[]): string {
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
$bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "cannot mount /sys"
$bb mount -t devtmpfs -o nosuid,noexec devtmpfs /dev || fail "cannot mount /dev"
exec </dev/null >/dev/console 2>&1

work_mib=16; tmp_mib=16; uid=1000
for arg in $($bb cat /proc/cmdline); do
  case "$arg" in
    mvm.work_mib=*) work_mib="\${arg#*=}" ;;
    mvm.tmp_mib=*) tmp_mib="\${arg#*=}" ;;
    mvm.uid=*) uid="\${arg#*=}" ;;
  esac
done
for v in "$work_mib" "$tmp_mib" "$uid"; do
  case "$v" in ''|*[!0-9]*) fail "bad kernel parameter value $v" ;; esac
done
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
find_port() {
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] && [ "$($bb cat "$p/name")" = "${AGENT_PORT_NAME}" ] && port="/dev/\${p##*/}" && [ -e "$port" ] && return 0
  done
  return 1
}
find_disks() {
  root_disk=$($bb findfs LABEL=${ROOT_DISK_LABEL} 2>/dev/null) && agent_disk=$($bb findfs LABEL=${AGENT_DISK_LABEL} 2>/dev/null)
}
wait_until find_disks || fail "no disks labelled ${ROOT_DISK_LABEL} and ${AGENT_DISK_LABEL}"
wait_until find_port || fail "no virtio port named ${AGENT_PORT_NAME}"

$bb mkdir -p /newroot
$bb mount -t ext4 -o ro,nosuid,nodev "$root_disk" /newroot || fail "cannot mount the image disk"
$bb mount -t ext4 -o ro,nosuid,nodev "$agent_disk" /newroot/.mvm || fail "cannot mount the agent runtime disk"
$bb mount -t tmpfs -o nosuid,nodev,size=\${work_mib}m,mode=0755,uid=$uid,gid=$uid tmpfs /newroot/work || fail "cannot mount /work"
$bb mount -t tmpfs -o nosuid,nodev,size=\${tmp_mib}m,mode=1777 tmpfs /newroot/tmp || fail "cannot mount /tmp"
$bb mount -t proc -o nosuid,nodev,noexec proc /newroot/proc || fail "cannot mount the new /proc"
$bb mount -t tmpfs -o nosuid,noexec,size=64k,mode=0755 tmpfs /newroot/dev || fail "cannot mount the new /dev"
$bb cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /newroot/dev/ || fail "cannot populate /dev"
$bb cp -a "$port" /newroot${GUEST_AGENT_PORT} || fail "cannot add the agent port to /dev"
$bb chown $uid:$uid /newroot${GUEST_AGENT_PORT} && $bb chmod 0600 /newroot${GUEST_AGENT_PORT} || fail "cannot hand the port to the agent"
$bb ln -s /proc/self/fd /newroot/dev/fd

$bb env -i HOME=/work PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \\
  $bb setpriv --nnp -- $bb nsenter -F -t 1 -r/newroot -w/newroot/work -S $uid -G $uid -- \\
  ${agentArgv().join(" ")}
$bb echo "mvm-init: agent exited with status $?"
$bb sync
$bb reboot -f
`;
}
