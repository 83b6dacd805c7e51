/**
 * The generated /init, read as text: the relay port and the loopback interface, the agent's
 * arguments, and the trust request's handling (the full behaviour runs in vm-egress.test.ts).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SYSTEM_TRUST_BUNDLE_PATH, TRUST_BUNDLE_PATH } from "@mvm/protocol";
import { GUEST_AGENT_PORT, GUEST_RELAY_PORT, MAX_TRUST_PAYLOAD_BYTES, RELAY_PORT_NAME, renderInitScript } from "./init-script.js";

const script = renderInitScript(["virtio_mmio", "virtio_console"]);
const lines = script.split("\n");
const has = (re: RegExp) => lines.some((line) => re.test(line));

describe("the init script", () => {
  it("finds the relay port by name and hands it to the agent's uid alone", () => {
    assert.equal(RELAY_PORT_NAME, "mvm.relay");
    assert.equal(GUEST_RELAY_PORT, "/dev/vport0p3");
    assert.ok(has(/^wait_until find_port relay mvm\.relay \|\| fail /));
    assert.ok(lines.includes(`$bb cp -a "$relay" /newroot${GUEST_RELAY_PORT} || fail "cannot add the relay port to /dev"`));
    assert.ok(has(new RegExp(`^\\$bb chown \\$uid:\\$uid /newroot${GUEST_RELAY_PORT} && \\$bb chmod 0600 /newroot${GUEST_RELAY_PORT} \\|\\| fail`)));
  });

  it("gives the new root a devpts instance of its own (terminals) before the agent starts", () => {
    const mount = lines.findIndex((line) => line.startsWith("$bb mount -t devpts "));
    assert.ok(mount >= 0);
    assert.match(lines[mount]!, /-o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts \/newroot\/dev\/pts \|\| fail /);
    assert.ok(lines.includes(`$bb ln -s pts/ptmx /newroot/dev/ptmx || fail "cannot add /dev/ptmx"`));
    assert.ok(mount < lines.findIndex((line) => line.includes("/.mvm/agent.cjs")));
    assert.ok(!script.includes("/dev/console /newroot"), "the console never enters the new root");
  });

  it("adds the sandbox user through read-only binds of copies, never writing the image, and gives it a home", () => {
    assert.ok(has(/^  add_entry passwd "user:x:\$uid:\$uid:user:\/home\/user:\$user_shell" \|\| fail /));
    assert.ok(has(/^  add_entry group "user:x:\$uid:" \|\| fail /));
    assert.ok(script.includes('$bb mount -o bind "/identity/$1" "/newroot/etc/$1" &&'));
    assert.ok(script.includes('$bb mount -o remount,bind,ro,nosuid,nodev,noexec "/newroot/etc/$1"'));
    assert.ok(!/> *"?\/newroot\/etc/.test(script), "nothing is written under the image's /etc");
    // Only a regular file, not through a symlink, at most 1 MiB, is read.
    assert.ok(script.includes('[ -d /newroot/etc ] && [ ! -L /newroot/etc ] && [ -f "$1" ] && [ ! -L "$1" ] &&'));
    assert.ok(has(/^  \$bb mount -t tmpfs -o nosuid,nodev,size=16m,mode=0755 tmpfs \/newroot\/home &&$/));
    assert.ok(script.includes("{ [ -z \"$home_tmpfs\" ] || $bb mount -o remount,nosuid,nodev,size=$4m /newroot/home; }"), "the home grows with the /tmp limit");
    const user = lines.findIndex((line) => line.startsWith("  add_entry passwd"));
    assert.ok(user < lines.findIndex((line) => line.includes("/.mvm/agent.cjs")));
  });

  it("starts the agent with its channel and relay ports", () => {
    const agent = lines.find((line) => line.includes("/.mvm/agent.cjs"));
    assert.ok(agent !== undefined);
    assert.match(agent, new RegExp(` --channel ${GUEST_AGENT_PORT} --relay ${GUEST_RELAY_PORT} --await-start &$`));
  });

  it("brings the loopback interface up and fails the boot when it cannot", () => {
    assert.ok(lines.includes(`$bb ip link set lo up || fail "cannot bring up the loopback interface"`));
  });

  it("reads the trust payload before checking anything else, bounded, and checks its hash", () => {
    assert.ok(lines.includes(`      "trust 3") answer trust do_trust "$2" "$3" ;;`));
    const body = script.slice(script.indexOf("do_trust() {"), script.indexOf("do_drop_caches() {"));
    const read = body.indexOf(`$bb head -c "$1" <&3 > /trust.b64`);
    assert.ok(read > 0);
    assert.ok(body.indexOf(`[ "$1" -le ${MAX_TRUST_PAYLOAD_BYTES} ]`) < read);
    for (const check of ['[ ${#2} -eq 64 ]', "[ -d /newroot/run ]", `sha256sum < /newroot${TRUST_BUNDLE_PATH})" = "$2  -" ]`]) {
      assert.ok(body.indexOf(check) > read, check);
    }
    assert.ok(body.includes(`$bb chmod 0444 /newroot${TRUST_BUNDLE_PATH}`));
    assert.ok(body.includes("$bb mount -o remount,ro,nosuid,nodev,noexec /newroot/run"));
  });

  it("bind-mounts over the system bundle only when no component of its path is a symlink", () => {
    const body = script.slice(script.indexOf("do_trust() {"), script.indexOf("do_drop_caches() {"));
    assert.ok(body.includes("if [ ! -L /newroot/etc ] && [ ! -L /newroot/etc/ssl ] && [ ! -L /newroot/etc/ssl/certs ] && " +
      `[ ! -L /newroot${SYSTEM_TRUST_BUNDLE_PATH} ] && [ -f /newroot${SYSTEM_TRUST_BUNDLE_PATH} ]; then`));
    assert.ok(body.includes(`$bb mount -o bind /newroot${TRUST_BUNDLE_PATH} $sys && $bb mount -o remount,bind,ro,nosuid,nodev,noexec $sys || return 1`));
  });
});
