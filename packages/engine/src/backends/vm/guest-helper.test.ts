import assert from "node:assert/strict";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AbortedError, InvalidArgumentError, TimeoutError, UnsupportedCapabilityError } from "@mvm/protocol";
import { sandboxSeccompProgram } from "../namespace/seccomp.js";
import { buildGuestHelper, guestHelperAvailable, isStaticElf, type GuestHelper } from "./guest-helper.js";

const CACHE = "/var/tmp/mvm-test-vm-cache/guest-helper";
const isRoot = process.getuid?.() === 0;

/** Exit statuses documented at the top of mvm-guest.c. */
const Exit = { Usage: 64, BadFilter: 65, NoInput: 66, NoPermission: 77, NotFound: 127 } as const;

/** Runs `args` in a private mount namespace, so nothing the helper mounts reaches the host's. */
function inPrivateMountNs(args: readonly string[]): SpawnSyncReturns<string> {
  return spawnSync("/usr/bin/unshare", ["--mount", "--propagation", "private", "--", ...args], { encoding: "utf8", timeout: 60_000 });
}

function runHelper(helper: GuestHelper, args: readonly string[], env: NodeJS.ProcessEnv = { PATH: "/usr/bin:/bin" }): SpawnSyncReturns<string> {
  return spawnSync(helper.path, args, { encoding: "utf8", env, timeout: 60_000 });
}

const hex = (bytes: number): string => randomBytes(bytes).toString("hex");

describe("guest helper", () => {
  let helper: GuestHelper;
  let scratch: string;
  let filter: string;

  before(async () => {
    helper = await buildGuestHelper({ outRoot: CACHE });
    scratch = await mkdtemp(join(tmpdir(), "mvm-guest-helper-"));
    filter = join(scratch, "sandbox.bpf");
    await writeFile(filter, sandboxSeccompProgram());
  });
  after(() => rm(scratch, { recursive: true, force: true }));

  describe("buildGuestHelper", () => {
    it("stores a static executable by source and compiler and reuses it", async () => {
      assert.match(helper.path, new RegExp(`^${CACHE}/[0-9a-f]{64}/mvm-guest$`));
      assert.match(helper.digest, /^sha256:[0-9a-f]{64}$/);
      const bytes = await readFile(helper.path);
      assert.ok(isStaticElf(bytes));
      const again = await buildGuestHelper({ outRoot: CACHE });
      assert.deepEqual(again, helper);
      assert.equal((await stat(again.path)).ino, (await stat(helper.path)).ino);
    });

    it("isStaticElf rejects a dynamically linked program and non-ELF bytes", async () => {
      assert.equal(isStaticElf(await readFile("/bin/ls")), false);
      assert.equal(isStaticElf(Buffer.from("#!/bin/sh\n")), false);
      assert.equal(isStaticElf(Buffer.alloc(0)), false);
      assert.equal(isStaticElf(await readFile("/bin/busybox")), true);
    });

    it("fails with UnsupportedCapabilityError and a hint when there is no compiler", async () => {
      const err = await buildGuestHelper({ outRoot: join(scratch, "none"), ccPath: join(scratch, "no-such-cc") }).then(
        () => assert.fail("expected a rejection"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof UnsupportedCapabilityError);
      assert.match(err.message, /not found/);
      assert.match(err.hint ?? "", /libc6-dev/);
      assert.equal(await guestHelperAvailable({ ccPath: join(scratch, "no-such-cc") }), false);
    });

    it("fails with UnsupportedCapabilityError when the compiler cannot link statically", async () => {
      const cc = join(scratch, "cc-no-static");
      await writeFile(cc, '#!/bin/sh\n[ "$1" = --version ] && { echo "stand-in cc 1"; exit 0; }\necho "ld: cannot find -lc" >&2\nexit 1\n');
      await chmod(cc, 0o755);
      await assert.rejects(buildGuestHelper({ outRoot: join(scratch, "out-no-static"), ccPath: cc }), (e: unknown) => {
        assert.ok(e instanceof UnsupportedCapabilityError);
        assert.match(e.message, /cannot find -lc/);
        return true;
      });
      assert.equal(await guestHelperAvailable({ ccPath: cc }), false);
    });

    it("rejects a compiler result that is dynamically linked and stores nothing", async () => {
      const cc = join(scratch, "cc-dynamic");
      await writeFile(
        cc,
        '#!/bin/sh\n[ "$1" = --version ] && { echo "stand-in cc 2"; exit 0; }\n' +
          'while [ $# -gt 0 ]; do [ "$1" = -o ] && { cp /bin/ls "$2"; exit 0; }; shift; done\nexit 1\n',
      );
      await chmod(cc, 0o755);
      const outRoot = join(scratch, "out-dynamic");
      await assert.rejects(buildGuestHelper({ outRoot, ccPath: cc }), /not a static executable/);
      const stored = spawnSync("find", [outRoot, "-type", "f"], { encoding: "utf8" });
      assert.equal(stored.stdout, "");
    });

    it("stops a compiler that never finishes at timeoutMs, and honours an aborted signal", async () => {
      const cc = join(scratch, "cc-hangs");
      await writeFile(cc, "#!/bin/sh\nexec /bin/sleep 100000\n");
      await chmod(cc, 0o755);
      await assert.rejects(buildGuestHelper({ outRoot: join(scratch, "out-hangs"), ccPath: cc, timeoutMs: 100 }), TimeoutError);
      await assert.rejects(buildGuestHelper({ outRoot: join(scratch, "out-abort"), signal: AbortSignal.abort() }), AbortedError);
    });

    it("rejects a relative outRoot", async () => {
      await assert.rejects(buildGuestHelper({ outRoot: "relative/dir" }), InvalidArgumentError);
    });

    it("guestHelperAvailable is true on this host", async () => {
      assert.equal(await guestHelperAvailable(), true);
    });
  });

  describe("seccomp", () => {
    it("runs the program with its arguments and environment under no_new_privs and the filter", () => {
      const echo = runHelper(helper, ["seccomp", filter, "--", "/bin/echo", "ok"]);
      assert.equal(echo.stderr, "");
      assert.equal(echo.status, 0);
      assert.equal(echo.stdout, "ok\n");

      const args = runHelper(helper, ["seccomp", filter, "--", "/bin/busybox", "echo", "a", "b c"]);
      assert.equal(args.stdout, "a b c\n");

      const env = runHelper(helper, ["seccomp", filter, "--", "/usr/bin/env"], { MVM_TEST_MARK: "kept" });
      assert.equal(env.stdout, "MVM_TEST_MARK=kept\n");

      const status = runHelper(helper, ["seccomp", filter, "--", "/bin/busybox", "cat", "/proc/self/status"]);
      assert.equal(status.status, 0);
      assert.match(status.stdout, /^NoNewPrivs:\s+1$/m);
      assert.match(status.stdout, /^Seccomp:\s+2$/m);
    });

    it("denies creating namespaces with EPERM", { skip: isRoot ? false : "needs root: the unfiltered control creates a user namespace" }, () => {
      // Control: without the filter the same command succeeds, so the denial below is the filter's.
      assert.equal(spawnSync("/bin/busybox", ["unshare", "-r", "true"]).status, 0);
      const denied = runHelper(helper, ["seccomp", filter, "--", "/bin/busybox", "unshare", "-r", "true"]);
      assert.notEqual(denied.status, 0);
      assert.match(denied.stderr, /Operation not permitted/);
    });

    it("denies mount with EPERM", { skip: isRoot ? false : "needs root to mount in the control" }, () => {
      // Runs in a private mount namespace, so a broken filter cannot mount over the host's /mnt.
      const inPrivateNs = (args: readonly string[]): SpawnSyncReturns<string> =>
        spawnSync("/usr/bin/unshare", ["--mount", "--propagation", "private", "--", ...args], { encoding: "utf8", timeout: 60_000 });
      assert.equal(inPrivateNs(["/bin/busybox", "mount", "-t", "tmpfs", "x", "/mnt"]).status, 0);
      const denied = inPrivateNs([helper.path, "seccomp", filter, "--", "/bin/busybox", "mount", "-t", "tmpfs", "x", "/mnt"]);
      assert.notEqual(denied.status, 0);
      assert.match(denied.stderr, /permission denied/i);
    });

    it("rejects bad filter files before running anything", async () => {
      const marker = join(scratch, "ran");
      const touch = ["--", "/bin/busybox", "touch", marker];
      const cases: [string, Buffer, RegExp][] = [
        ["empty.bpf", Buffer.alloc(0), /is empty/],
        ["odd.bpf", Buffer.alloc(12), /has 12 bytes: not a multiple of 8/],
        ["big.bpf", Buffer.concat([sandboxSeccompProgram(), Buffer.alloc(4097 * 8)]), /too big: more than 4096 instructions/],
        ["invalid.bpf", Buffer.alloc(16), /rejected it as invalid/],
      ];
      for (const [name, bytes, message] of cases) {
        const file = join(scratch, name);
        await writeFile(file, bytes);
        const r = runHelper(helper, ["seccomp", file, ...touch]);
        assert.equal(r.status, Exit.BadFilter, name);
        assert.match(r.stderr, message, name);
      }
      const missing = runHelper(helper, ["seccomp", join(scratch, "missing.bpf"), ...touch]);
      assert.equal(missing.status, Exit.NoInput);
      assert.match(missing.stderr, /cannot open the filter file ".*missing\.bpf": No such file or directory/);
      const notFile = runHelper(helper, ["seccomp", "/dev/null", ...touch]);
      assert.equal(notFile.status, Exit.BadFilter);
      assert.match(notFile.stderr, /is not a regular file/);
      await assert.rejects(stat(marker), { code: "ENOENT" });
    });

    it("rejects malformed command lines and a missing program", () => {
      assert.equal(runHelper(helper, ["seccomp", filter, "/bin/echo", "ok"]).status, Exit.Usage);
      assert.equal(runHelper(helper, ["seccomp", filter, "--"]).status, Exit.Usage);
      assert.equal(runHelper(helper, []).status, Exit.Usage);
      const unknown = runHelper(helper, ["shell"]);
      assert.equal(unknown.status, Exit.Usage);
      assert.match(unknown.stderr, /unknown command "shell"/);
      const missing = runHelper(helper, ["seccomp", filter, "--", "/no/such/program"]);
      assert.equal(missing.status, Exit.NotFound);
      assert.match(missing.stderr, /cannot execute "\/no\/such\/program": No such file or directory/);
    });
  });

  describe("sandbox", { skip: isRoot ? false : "needs root: it makes a pid namespace, mounts /proc and changes uid" }, () => {
    let root: string;
    const sandbox = (uid: string, ...program: string[]): SpawnSyncReturns<string> =>
      inPrivateMountNs([helper.path, "sandbox", filter, root, "/work", uid, "--", ...program]);

    before(async () => {
      root = join(scratch, "root");
      for (const dir of ["bin", "proc", "work"]) await mkdir(join(root, dir), { recursive: true });
      await copyFile("/bin/busybox", join(root, "bin/busybox"));
      await chmod(join(root, "bin/busybox"), 0o755);
      await chmod(root, 0o755);
      await chmod(scratch, 0o711); // uid 65534 reaches the root's files (below) by path
    });

    it("runs the program as pid 2 of a new pid namespace under an unprivileged reaper, with no capabilities, no_new_privs and the filter", () => {
      const r = sandbox(
        "65534",
        "/bin/busybox",
        "sh",
        "-c",
        'echo "pid $$ cwd $(pwd)"; cat /proc/self/status; echo "visible $(cd /proc && echo [0-9]*)"; echo ==; cat /proc/1/status',
      );
      assert.equal(r.stderr, "");
      assert.equal(r.status, 0);
      const [self = "", init = ""] = r.stdout.split("==\n");
      assert.match(self, /^pid 2 cwd \/work$/m);
      // Only the namespace's own processes: its reaper (1), the shell (2) and whatever the shell runs.
      const visible = (/^visible (.*)$/m.exec(self)?.[1] ?? "").split(" ").map(Number);
      assert.deepEqual(visible.slice(0, 2), [1, 2], self);
      assert.ok(visible.every((pid) => pid < 10), self);
      for (const status of [self, init]) {
        assert.match(status, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
        assert.match(status, /^Gid:\s+65534\s+65534\s+65534\s+65534$/m);
        assert.match(status, /^Groups:\s*$/m);
        for (const set of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) assert.match(status, new RegExp(`^${set}:\\s+0+$`, "m"), set);
        assert.match(status, /^NoNewPrivs:\s+1$/m);
        assert.match(status, /^Seccomp:\s+2$/m);
      }
      assert.match(init, /^Name:\s+mvm-guest$/m);
    });

    it("exits with the program's status, and the processes it leaves behind end with it", () => {
      // A left-behind sleep would hold stdout open and spawnSync would wait for it until its timeout.
      const r = sandbox("65534", "/bin/busybox", "sh", "-c", "/bin/busybox sleep 600 & exit 7");
      assert.equal(r.error, undefined);
      assert.equal(r.status, 7);
      const killed = sandbox("65534", "/bin/busybox", "sh", "-c", "kill -9 $$");
      assert.equal(killed.status, 128 + 9);
    });

    it("rejects a bad uid, relative paths and a missing program; an unprivileged caller gets 77", async () => {
      for (const uid of ["0", "-1", "abc", "", "2147483647", "99999999999"]) {
        const r = sandbox(uid, "/bin/busybox", "true");
        assert.equal(r.status, Exit.Usage, JSON.stringify(uid));
      }
      assert.equal(runHelper(helper, ["sandbox", filter, "relative", "/work", "1000", "--", "/bin/busybox", "true"]).status, Exit.Usage);
      assert.equal(runHelper(helper, ["sandbox", filter, root, "/work", "1000", "/bin/busybox", "true"]).status, Exit.Usage);
      const missing = sandbox("65534", "/no/such/program");
      assert.equal(missing.status, Exit.NotFound);
      assert.match(missing.stderr, /cannot execute "\/no\/such\/program": No such file or directory/);
      // The filter is copied where uid 65534 can read it, so the refusal is the namespace's.
      const readableFilter = join(root, "sandbox.bpf");
      await copyFile(filter, readableFilter);
      await chmod(readableFilter, 0o644);
      const unprivileged = spawnSync(
        "/usr/bin/setpriv",
        ["--reuid=65534", "--regid=65534", "--clear-groups", "--", helper.path, "sandbox", readableFilter, root, "/work", "1000", "--", "/bin/busybox", "true"],
        { encoding: "utf8", timeout: 60_000 },
      );
      assert.equal(unprivileged.status, Exit.NoPermission);
      assert.match(unprivileged.stderr, /cannot make a pid namespace: Operation not permitted/);
    });
  });

  describe("reseed", () => {
    it("adds a seed and reseeds the CRNG as root", { skip: isRoot ? false : "needs CAP_SYS_ADMIN" }, () => {
      for (const bytes of [32, 100, 256]) {
        const r = runHelper(helper, ["reseed", hex(bytes)]);
        assert.equal(r.stderr, "", `${bytes} bytes`);
        assert.equal(r.status, 0, `${bytes} bytes`);
      }
      assert.equal(runHelper(helper, ["reseed", hex(32).toUpperCase()]).status, 0);
    });

    it("rejects seeds that are not 32..256 bytes of hex", () => {
      const cases: [string, RegExp][] = [
        [hex(31), /62 hex digits/],
        [hex(257), /514 hex digits/],
        [`${hex(32)}a`, /65 hex digits/],
        ["", /0 hex digits/],
        [`${hex(31)}zz`, /not hex: bad digit at offset 62/],
        [`${hex(31)} 0`, /not hex: bad digit at offset 62/],
      ];
      for (const [seed, message] of cases) {
        const r = runHelper(helper, ["reseed", seed]);
        assert.equal(r.status, Exit.Usage, JSON.stringify(seed));
        assert.match(r.stderr, message, JSON.stringify(seed));
      }
      assert.equal(runHelper(helper, ["reseed"]).status, Exit.Usage);
      assert.equal(runHelper(helper, ["reseed", hex(32), hex(32)]).status, Exit.Usage);
    });

    it("fails with EPERM for an unprivileged caller", { skip: isRoot ? false : "needs root to switch to uid 65534" }, () => {
      const r = spawnSync(
        "/usr/bin/setpriv",
        ["--reuid=65534", "--regid=65534", "--clear-groups", "--", helper.path, "reseed", hex(32)],
        { encoding: "utf8", timeout: 60_000 },
      );
      assert.equal(r.status, Exit.NoPermission);
      assert.match(r.stderr, /cannot add the seed \(RNDADDENTROPY\): Operation not permitted/);
    });
  });
});
