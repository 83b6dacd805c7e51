import { test } from "node:test";
import assert from "node:assert/strict";
import { editDistance, nearest, parseCommandLine } from "./args.js";
import { COMMANDS } from "./commands/index.js";
import { UsageError } from "./usage-error.js";
import { cli } from "./_test/test-io.js";

const ID = "sbx_abcdefghijklmnopqrst";

type Good = { argv: string[]; name: string; options?: unknown; json?: boolean; embedded?: boolean; socketPath?: string };

const GOOD: Good[] = [
  { argv: ["doctor"], name: "doctor", options: {} },
  { argv: ["--json", "doctor"], name: "doctor", json: true },
  { argv: ["doctor", "--json"], name: "doctor", json: true },
  { argv: ["--socket", "/run/x.sock", "ls"], name: "ls", socketPath: "/run/x.sock" },
  { argv: ["ls", "--socket=/run/y.sock"], name: "ls", socketPath: "/run/y.sock" },
  { argv: ["run", "--embedded", "--", "/bin/echo", "hi"], name: "run", embedded: true },
  {
    argv: ["run", "--image", "debian:bookworm", "--memory", "256", "--pids", "64", "--cpus", "0.5", "--ttl", "60", "--backend", "namespace", "--", "/bin/echo", "hi"],
    name: "run",
    options: {
      // The plan of a one-shot run names its command.
      create: { image: "debian:bookworm", backend: "namespace", ttlSeconds: 60, resources: { memoryMiB: 256, pids: 64, cpus: 0.5 }, command: ["/bin/echo", "hi"] },
      exec: { argv: ["/bin/echo", "hi"] },
    },
  },
  {
    argv: ["run", "--env", "A=1", "--env=B=x=y", "--cwd", "/work", "--timeout", "1.5", "--", "sh", "-c", "exit 7"],
    name: "run",
    // With --timeout and no --ttl, the one-shot sandbox lives at least as long as the command may.
    options: { create: { ttlSeconds: 600, command: ["sh", "-c", "exit 7"] }, exec: { argv: ["sh", "-c", "exit 7"], env: { A: "1", B: "x=y" }, cwd: "/work", timeoutMs: 1500 } },
  },
  { argv: ["image", "import", "/srv/rootfs.tar.gz", "local/tools"], name: "image import", options: { path: "/srv/rootfs.tar.gz", name: "local/tools" } },
  // Options after "--" belong to the command, not to mvmctl.
  { argv: ["run", "--", "ls", "--json", "--help"], name: "run", json: false, options: { create: { command: ["ls", "--json", "--help"] }, exec: { argv: ["ls", "--json", "--help"] } } },
  // Without "--" the positionals are the command.
  { argv: ["run", "/bin/echo", "hi"], name: "run", options: { create: { command: ["/bin/echo", "hi"] }, exec: { argv: ["/bin/echo", "hi"] } } },
  {
    argv: ["run", "--mode", "plan", "--valid-for", "600", "--intent", "ci:test", "--", "make", "test"],
    name: "run",
    options: { mode: "plan", create: { command: ["make", "test"], intent: "ci:test" }, exec: { argv: ["make", "test"] }, validForSeconds: 600 },
  },
  { argv: ["run", "--plan", "p.json"], name: "run", options: { mode: "live", create: undefined, exec: undefined, planFile: "p.json" } },
  { argv: ["create", "--label", "team=ci", "--label", "job=7", "--ttl", "600"], name: "create", options: { request: { ttlSeconds: 600, labels: { team: "ci", job: "7" } }, planFile: undefined, planIndex: undefined, labels: { team: "ci", job: "7" } } },
  { argv: ["create", "--plan", "p.json", "--plan-index", "2"], name: "create", options: { request: undefined, planFile: "p.json", planIndex: 2, labels: undefined } },
  { argv: ["exec", ID, "--", "cat", "/etc/os-release"], name: "exec", options: { sandboxId: ID, exec: { argv: ["cat", "/etc/os-release"] }, interactive: false, tty: false } },
  { argv: ["exec", "--timeout", "3", ID, "--", "true"], name: "exec", options: { sandboxId: ID, exec: { argv: ["true"], timeoutMs: 3000 }, interactive: false, tty: false } },
  { argv: ["exec", ID, "true"], name: "exec", options: { sandboxId: ID, exec: { argv: ["true"] }, interactive: false, tty: false } },
  // -i and -t as docker has them, grouped or apart.
  { argv: ["exec", "-it", ID, "--", "bash"], name: "exec", options: { sandboxId: ID, exec: { argv: ["bash"] }, interactive: true, tty: true } },
  { argv: ["exec", "-t", "--interactive", ID, "--", "bash"], name: "exec", options: { sandboxId: ID, exec: { argv: ["bash"] }, interactive: true, tty: true } },
  { argv: ["run", "-it", "--", "bash"], name: "run", options: { exec: { argv: ["bash"] }, interactive: true, tty: true } },
  { argv: ["ps", ID], name: "ps", options: { sandboxId: ID } },
  { argv: ["attach", ID, "42"], name: "attach", options: { sandboxId: ID, pid: 42, stdin: true, tty: false } },
  { argv: ["attach", "-it", ID, "42"], name: "attach", options: { sandboxId: ID, pid: 42, stdin: true, tty: true } },
  { argv: ["attach", "--no-stdin", ID, "42"], name: "attach", options: { sandboxId: ID, pid: 42, stdin: false, tty: false } },
  { argv: ["pkill", "--signal", "TERM", ID, "42"], name: "pkill", options: { sandboxId: ID, pid: 42, signal: "SIGTERM" } },
  { argv: ["cp", "./a.txt", `${ID}:/work/a.txt`], name: "cp", options: { from: { kind: "local", path: "./a.txt" }, to: { kind: "sandbox", sandboxId: ID, path: "/work/a.txt" }, recursive: false } },
  { argv: ["cp", "-r", "./d", `${ID}:/work/d`], name: "cp", options: { from: { kind: "local", path: "./d" }, to: { kind: "sandbox", sandboxId: ID, path: "/work/d" }, recursive: true } },
  { argv: ["cp", `${ID}:/etc/hostname`, "-"], name: "cp", options: { from: { kind: "sandbox", sandboxId: ID, path: "/etc/hostname" }, to: { kind: "local", path: "-" }, recursive: false } },
  { argv: ["kill", ID, ID], name: "kill", options: { ids: [ID] } },
  { argv: ["image", "build", "debian:bookworm+python3", "--force"], name: "image build", options: { ref: "debian:bookworm+python3", force: true } },
  { argv: ["image", "build", "debian:bookworm"], name: "image build", options: { ref: "debian:bookworm", force: false } },
  { argv: ["image", "ls"], name: "image ls", options: {} },
  { argv: ["image", "rm", "debian:bookworm"], name: "image rm", options: { ref: "debian:bookworm" } },
  { argv: ["daemon", "--socket", "/tmp/d.sock"], name: "daemon", socketPath: "/tmp/d.sock" },
  { argv: ["daemon", "--group", "mvm"], name: "daemon", options: { group: "mvm" } },
];

for (const g of GOOD) {
  test(`parses: mvmctl ${g.argv.join(" ")}`, () => {
    const parsed = parseCommandLine(g.argv, COMMANDS);
    assert.equal(parsed.kind, "command");
    if (parsed.kind !== "command") return;
    assert.equal(parsed.command.name, g.name);
    if (g.options !== undefined) {
      // `run` options also carry the raw arguments and unset fields: compare the fields the case names.
      const actual =
        g.name === "run"
          ? Object.fromEntries(Object.keys(g.options as object).map((k) => [k, (parsed.options as Record<string, unknown>)[k]]))
          : parsed.options;
      assert.deepEqual(actual, g.options);
    }
    assert.equal(parsed.global.json, g.json ?? false);
    assert.equal(parsed.global.embedded, g.embedded ?? false);
    assert.equal(parsed.global.socketPath, g.socketPath);
  });
}

type Bad = { argv: string[]; message: RegExp };

const BAD: Bad[] = [
  { argv: ["frobnicate"], message: /^Unknown command "frobnicate"$/ },
  { argv: ["image", "push", "x"], message: /^Unknown command "image push"$/ },
  { argv: ["--bogus", "ls"], message: /^Unknown option "--bogus"$/ },
  { argv: ["ls", "--bogus"], message: /^Unknown option "--bogus" for "mvmctl ls"$/ },
  { argv: ["ls", "extra"], message: /^Unexpected argument "extra"$/ },
  { argv: ["run", "sh", "-c", "exit 7"], message: /^Unknown option "-c" for "mvmctl run"$/ },
  { argv: ["run"], message: /^Missing the command to run$/ },
  { argv: ["run", "--"], message: /^Missing the command to run$/ },
  { argv: ["run", "--memory", "lots", "--", "true"], message: /^Invalid value "lots" for --memory: expected a whole number$/ },
  { argv: ["run", "--memory=-5", "--", "true"], message: /^Invalid value "-5" for --memory/ },
  { argv: ["run", "--memory", "8", "--", "true"], message: /^Invalid value "8" for --memory: / },
  { argv: ["run", "--cpus", "1e3", "--", "true"], message: /^Invalid value "1e3" for --cpus/ },
  { argv: ["run", "--ttl", "0", "--", "true"], message: /^Invalid value "0" for --ttl: / },
  { argv: ["run", "--backend", "chroot", "--", "true"], message: /^Invalid value "chroot" for --backend: / },
  { argv: ["run", "--image", "Debian:Bookworm", "--", "true"], message: /^Invalid value "Debian:Bookworm" for --image: / },
  { argv: ["run", "--env", "NOEQUALS", "--", "true"], message: /^Invalid value "NOEQUALS" for --env: expected KEY=VALUE$/ },
  { argv: ["run", "--env", "1BAD=x", "--", "true"], message: /for --env/ },
  { argv: ["run", "--mode", "dry", "--", "true"], message: /^Invalid value "dry" for --mode: expected live or plan$/ },
  { argv: ["run", "--plan", "p.json", "--image", "x", "--", "true"], message: /^--plan cannot be combined with --image$/ },
  { argv: ["run", "--plan", "p.json", "--mode", "plan"], message: /--mode plan makes one/ },
  { argv: ["run", "--valid-for", "60", "--", "true"], message: /^--valid-for only applies with --mode plan$/ },
  { argv: ["create", "--plan", "p.json", "--memory", "512"], message: /^--plan cannot be combined with --memory$/ },
  { argv: ["run", "--cwd", "relative/dir", "--", "true"], message: /^Invalid value "relative\/dir" for --cwd/ },
  { argv: ["run", "--cwd", "/work/../etc", "--", "true"], message: /for --cwd/ },
  { argv: ["run", "--timeout", "0", "--", "true"], message: /^Invalid value "0" for --timeout: expected more than zero seconds$/ },
  { argv: ["run", "--timeout", "9999999", "--", "true"], message: /^Invalid value "9999999" for --timeout: expected at most 604800 seconds$/ },
  { argv: ["run", "--image", "a", "--image", "b", "--", "true"], message: /^Option "--image" is given more than once$/ },
  { argv: ["run", "--memory"], message: /^Option "--memory" needs a value$/ },
  { argv: ["ls", "--json=yes"], message: /^Option "--json" takes no value$/ },
  { argv: ["--socket"], message: /^Option "--socket" needs a value$/ },
  { argv: ["ls", "--embedded", "--socket", "/x"], message: /exclude each other/ },
  { argv: ["exec"], message: /^Missing arguments for "mvmctl exec"/ },
  { argv: ["exec", "not-an-id", "--", "true"], message: /^Invalid sandbox id "not-an-id"$/ },
  { argv: ["exec", ID, "--"], message: /^Missing the command to run$/ },
  { argv: ["attach", ID, "0"], message: /^Invalid PID "0": expected a positive integer$/ },
  { argv: ["attach", "-t", "--no-stdin", ID, "42"], message: /^-t needs stdin/ },
  { argv: ["pkill", "--signal", "SIGBOGUS", ID, "42"], message: /^Invalid value "SIGBOGUS" for --signal/ },
  { argv: ["kill"], message: /^Missing arguments for "mvmctl kill"/ },
  { argv: ["kill", "sbx_UPPERCASE0000000000"], message: /^Invalid sandbox id/ },
  { argv: ["cp", "a", "b"], message: /^Neither side of mvmctl cp is in a sandbox$/ },
  { argv: ["cp", `${ID}:/a`, `${ID}:/b`], message: /^Both sides of mvmctl cp are in sandboxes$/ },
  { argv: ["cp", `${ID}:relative`, "b"], message: /^Invalid sandbox path/ },
  { argv: ["cp", `${ID}:/work/../etc/shadow`, "b"], message: /^Invalid sandbox path/ },
  { argv: ["cp", "a"], message: /^Missing arguments for "mvmctl cp"/ },
  { argv: ["ttl", ID, "0"], message: /^Invalid TTL "0": expected whole seconds from 1 to 604800/ },
  { argv: ["port", ID, "0"], message: /^Invalid port "0": expected a port number from 1 to 65535/ },
  { argv: ["port", "--host-port", "80", ID, "8080"], message: /^Option "--host-port" needs "--publish"/ },
  { argv: ["image", "build"], message: /^Missing arguments for "mvmctl image build"/ },
  { argv: ["image", "build", "BAD REF"], message: /^Invalid image reference "BAD REF"/ },
  { argv: ["image", "rm", "a", "b"], message: /^Unexpected argument "b"$/ },
];

for (const b of BAD) {
  test(`usage error: mvmctl ${b.argv.join(" ")}`, async () => {
    assert.throws(
      () => parseCommandLine(b.argv, COMMANDS),
      (err: unknown) => err instanceof UsageError && b.message.test(err.message),
    );
    const r = await cli(b.argv);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^error: .+\nhint: .+\n$/);
  });
}

test("help and version", async () => {
  for (const argv of [["--help"], ["-h"], ["help"]]) {
    const r = await cli(argv);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^mvmctl: run untrusted code/);
    for (const c of COMMANDS) assert.ok(r.stdout.includes(`  ${c.name} `), `top help lists ${c.name}`);
  }
  for (const c of COMMANDS) {
    for (const argv of [[...c.name.split(" "), "--help"], ["help", ...c.name.split(" ")]]) {
      const r = await cli(argv);
      assert.equal(r.code, 0, argv.join(" "));
      assert.ok(r.stdout.includes(`Usage: mvmctl ${c.name}`), argv.join(" "));
      for (const flag of Object.keys(c.flags)) assert.ok(r.stdout.includes(`--${flag}`), `${c.name} help shows --${flag}`);
    }
  }
  const none = await cli([]);
  assert.equal(none.code, 2);
  assert.equal(none.stdout, "");
  assert.match(none.stderr, /^mvmctl: run untrusted code/);
  const group = await cli(["image"]);
  assert.equal(group.code, 2);
  assert.match(group.stderr, /Subcommands:\n  image build/);
  const version = await cli(["--version"]);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^mvmctl \d+\.\d+\.\d+\n$/);
  const jsonVersion = await cli(["--json", "-V"]);
  assert.deepEqual(Object.keys(JSON.parse(jsonVersion.stdout)), ["version"]);
});

test("a usage error in --json mode also prints a JSON error on stdout", async () => {
  const r = await cli(["ls", "--json", "--bogus"]);
  assert.equal(r.code, 2);
  assert.deepEqual(JSON.parse(r.stdout), {
    error: { code: "USAGE", message: 'Unknown option "--bogus" for "mvmctl ls"', hint: 'Run "mvmctl ls --help" for its usage' },
  });
});

test("a misspelt flag or command is answered with the nearest one; limits are stated in the flag's unit", async () => {
  const flag = await cli(["run", "--memroy", "256", "--", "true"]);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /^error: Unknown option "--memroy" for "mvmctl run"\nhint: Did you mean "--memory"\? Run "mvmctl run --help" for its usage\n/);
  const prefix = await cli(["create", "--back", "namespace"]);
  assert.match(prefix.stderr, /hint: Did you mean "--backend"\?/);
  const far = await cli(["ls", "--zzzzzz"]);
  assert.doesNotMatch(far.stderr, /Did you mean/);
  const command = await cli(["snapsot", "ls"]);
  assert.match(command.stderr, /^error: Unknown command "snapsot"\nhint: Did you mean "snapshot"\? Commands: /);
  const small = await cli(["run", "--memory", "5", "--", "true"]);
  assert.equal(small.code, 2);
  assert.match(small.stderr, /^error: Invalid value "5" for --memory: --memory is in MiB, from 128 to 1048576 \(5 is below the minimum\)\n/);
  const pids = await cli(["run", "--pids", "2000000", "--", "true"]);
  assert.match(pids.stderr, /^error: Invalid value "2000000" for --pids: --pids is in processes and threads, from 8 to 1000000\n/);
  const help = await cli(["run", "--help"]);
  assert.match(help.stdout, /Memory limit in MiB, 128 to 1048576/);
});

test("nearest: one close name, or none when two are as close or none is", () => {
  assert.equal(nearest("memroy", ["memory", "pids"]), "memory");
  assert.equal(nearest("ttl", ["ttl", "tty"]), "ttl");
  assert.equal(nearest("tt", ["ttl", "tty"]), undefined, "a prefix of two names names neither");
  assert.equal(nearest("x", ["x1"]), undefined);
  assert.equal(nearest("publsh", ["publish", "plan"]), "publish");
  assert.equal(nearest("abcdef", ["uvwxyz"]), undefined);
  assert.equal(editDistance("ab", "ba"), 1);
  assert.equal(editDistance("", "abc"), 3);
});
