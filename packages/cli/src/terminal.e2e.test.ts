/**
 * End-to-end in a real terminal: the built mvmctl runs inside tmux (a private server per test),
 * keys are sent with `send-keys` and the screen is read with `capture-pane`, as a person would
 * use `mvmctl run -it` and `mvmctl exec -it` (docs/TERMINALS.md). Then ps, attach and pkill
 * through a daemon, from separate mvmctl processes.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MVMCTL, cliEnv, skipWithoutImages, startDaemon, type TestDaemon } from "./_test/e2e-env.js";

const hasTmux = spawnSync("tmux", ["-V"], { stdio: "ignore" }).status === 0;
const skip = skipWithoutImages ?? (hasTmux ? undefined : "tmux is not installed (scripts/setup.sh installs it)");

/** One tmux server on a private socket, with one window running `script`. */
class Tmux {
  readonly #socket: string;
  constructor(dir: string, script: string, size = { cols: 100, rows: 30 }) {
    this.#socket = join(dir, "tmux.sock");
    const file = join(dir, "session.sh");
    writeFileSync(file, script, { mode: 0o700 });
    this.#tmux(["new-session", "-d", "-s", "t", "-x", String(size.cols), "-y", String(size.rows), `sh ${file}`]);
  }
  #tmux(args: string[]): string {
    return execFileSync("tmux", ["-S", this.#socket, "-f", "/dev/null", ...args], { encoding: "utf8" });
  }
  /** Types `keys` (tmux key names, e.g. "Enter", "C-c"; others literally). */
  send(...keys: string[]): void {
    this.#tmux(["send-keys", "-t", "t", ...keys]);
  }
  type(text: string): void {
    this.#tmux(["send-keys", "-t", "t", "-l", text]);
  }
  screen(): string {
    return this.#tmux(["capture-pane", "-p", "-t", "t", "-S", "-200"]);
  }
  resize(cols: number, rows: number): void {
    this.#tmux(["resize-window", "-t", "t", "-x", String(cols), "-y", String(rows)]);
  }
  /** Waits until the screen matches `pattern`; fails with the screen when it never does. */
  async waitFor(pattern: RegExp, timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const screen = this.screen();
      if (pattern.test(screen)) return screen;
      if (Date.now() > deadline) assert.fail(`the screen never matched ${pattern}:\n${screen}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  kill(): void {
    spawnSync("tmux", ["-S", this.#socket, "kill-server"], { stdio: "ignore" });
  }
}

/** A shell script that exports `env`, records the terminal's mode, runs `command`, and reports. */
function sessionScript(dir: string, env: NodeJS.ProcessEnv, command: string): string {
  const exports = Object.entries(env)
    .filter(([k, v]) => v !== undefined && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `export ${k}='${String(v).replaceAll("'", "'\\''")}'`)
    .join("\n");
  return `${exports}\nstty -g > ${dir}/before\n${command}\necho "EXIT=$?"\nstty -g > ${dir}/after\necho DONE\nexec sleep 600\n`;
}

/** A fresh directory the sandbox's uid can pass through (state directories live in it); the caller removes it. */
function stateRoot(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `mvmctl-${prefix}-`));
  chmodSync(dir, 0o711);
  return dir;
}

const count = (text: string, pattern: RegExp): number => (text.match(new RegExp(pattern.source, "g")) ?? []).length;

describe("mvmctl -it in a real terminal (tmux)", { skip, timeout: 300_000 }, () => {
  test("run -it: tty, window size and resize, Ctrl-C to the command, exit code, terminal mode restored", async (t) => {
    // The tmux server goes first, then its directory (after hooks run in the order they were added).
    const dir = stateRoot("tty-run");
    const env = { ...cliEnv(dir), PS1: "$ " };
    const tmux = new Tmux(dir, sessionScript(dir, env, `${process.execPath} ${MVMCTL} run --embedded -it -- /bin/sh`));
    t.after(() => {
      tmux.kill();
      rmSync(dir, { recursive: true, force: true });
    });
    await tmux.waitFor(/^\$ ?$/m);
    tmux.type("tty; stty size");
    tmux.send("Enter");
    await tmux.waitFor(/^\/dev\/pts\/\d+\s*\n30 100\s*$/m);

    tmux.type("sleep 30; echo after-sleep");
    tmux.send("Enter");
    await new Promise((resolve) => setTimeout(resolve, 1000));
    tmux.send("C-c");
    // Ctrl-C interrupted the whole foreground job: the echo after it never ran, the shell prompts again.
    const screen = await tmux.waitFor(/\^C\s*\n\$ ?$/m, 20_000);
    assert.doesNotMatch(screen, /^after-sleep/m);

    tmux.resize(120, 40);
    await new Promise((resolve) => setTimeout(resolve, 500));
    tmux.type("stty size");
    tmux.send("Enter");
    await tmux.waitFor(/^40 120\s*$/m);

    tmux.type("exit 7");
    tmux.send("Enter");
    await tmux.waitFor(/^DONE$/m);
    assert.match(tmux.screen(), /^EXIT=7$/m);
    assert.equal(readFileSync(join(dir, "after"), "utf8"), readFileSync(join(dir, "before"), "utf8"), "the terminal mode was not restored");
  });

  describe("through a daemon", () => {
    let dir: string;
    let env: NodeJS.ProcessEnv;
    let daemon: TestDaemon;
    let sandboxId: string;
    before(async () => {
      dir = stateRoot("tty-daemon");
      // The daemon's socket directory is its own (0700).
      const run = join(dir, "run");
      mkdirSync(run, { mode: 0o700 });
      env = { ...cliEnv(dir), MVM_DAEMON_SOCKET: join(run, "d.sock"), PS1: "$ " };
      daemon = await startDaemon(env, join(run, "d.sock"));
      sandboxId = execFileSync(process.execPath, [MVMCTL, "create"], { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
    });
    after(async () => {
      if (sandboxId) spawnSync(process.execPath, [MVMCTL, "kill", sandboxId], { env, stdio: "ignore" });
      await daemon?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    test("exec -it: keys in, screen out, exit code out; a failed command restores the terminal too", async (t) => {
      // Each terminal gets a directory (tmux socket, script, recorded modes) of its own.
      const here = mkdtempSync(join(dir, "t-"));
      const tmux = new Tmux(here, sessionScript(here, env, `${process.execPath} ${MVMCTL} exec -it ${sandboxId} -- /bin/sh`));
      t.after(() => tmux.kill());
      await tmux.waitFor(/^\$ ?$/m);
      tmux.type("echo hello-$((6*7))");
      tmux.send("Enter");
      await tmux.waitFor(/^hello-42\s*$/m);
      tmux.type("exit 3");
      tmux.send("Enter");
      await tmux.waitFor(/^DONE$/m);
      assert.match(tmux.screen(), /^EXIT=3$/m);
      assert.equal(readFileSync(join(here, "after"), "utf8"), readFileSync(join(here, "before"), "utf8"));
    });

    test("exec -it of a missing command fails with the terminal restored", async (t) => {
      const here = mkdtempSync(join(dir, "t-"));
      const tmux = new Tmux(here, sessionScript(here, env, `${process.execPath} ${MVMCTL} exec -it ${sandboxId} -- /no/such/command`));
      t.after(() => tmux.kill());
      const screen = await tmux.waitFor(/^DONE$/m);
      assert.match(screen, /^EXIT=127$/m);
      assert.match(screen, /cannot execute "\/no\/such\/command"/);
      assert.equal(readFileSync(join(here, "after"), "utf8"), readFileSync(join(here, "before"), "utf8"));
    });

    test("attach -it drives a terminal process started elsewhere: its screen, keys, window size; Ctrl-P Ctrl-Q detaches with the terminal restored", async (t) => {
      // A shell on a sandbox terminal whose input no one forwards (-t alone), started by another mvmctl.
      const runner = spawn(process.execPath, [MVMCTL, "exec", "-t", sandboxId, "--", "/bin/sh", "-c", "echo started-$((2*3)); exec /bin/sh"], { env, stdio: ["ignore", "pipe", "pipe"] });
      const runnerExit = new Promise<number | null>((resolve) => runner.on("close", (code) => resolve(code)));
      t.after(() => runner.kill("SIGKILL"));
      let ran = "";
      runner.stdout.on("data", (c: Buffer) => (ran += c.toString()));
      while (!ran.includes("started-6")) await new Promise((resolve) => setTimeout(resolve, 50));
      const ps = JSON.parse(execFileSync(process.execPath, [MVMCTL, "--json", "ps", sandboxId], { env, encoding: "utf8" })) as { pid: number; argv: string[] }[];
      const found = ps.find((p) => p.argv.includes("echo started-$((2*3)); exec /bin/sh"));
      assert.ok(found, JSON.stringify(ps));

      const here = mkdtempSync(join(dir, "t-"));
      const tmux = new Tmux(here, sessionScript(here, env, `${process.execPath} ${MVMCTL} attach -it ${sandboxId} ${found.pid}`), { cols: 90, rows: 33 });
      t.after(() => tmux.kill());
      // The backlog first: what the shell printed before anyone attached.
      await tmux.waitFor(/^started-6/m);
      tmux.type("stty size; echo typed-$((6*7))");
      tmux.send("Enter");
      await tmux.waitFor(/^33 90\s*\n(.*\n)?typed-42\s*$/m);
      tmux.send("C-c");
      await tmux.waitFor(/\^C/);
      tmux.send("C-p", "C-q");
      const screen = await tmux.waitFor(/^DONE$/m);
      assert.match(screen, /^EXIT=0$/m);
      assert.match(screen, /detached \(Ctrl-P Ctrl-Q\); process \d+ runs on/);
      assert.equal(readFileSync(join(here, "after"), "utf8"), readFileSync(join(here, "before"), "utf8"), "the terminal mode was not restored");
      // Ctrl-C went to the shell as a key and the detach left it running: attach again and end it.
      assert.ok((JSON.parse(execFileSync(process.execPath, [MVMCTL, "--json", "ps", sandboxId], { env, encoding: "utf8" })) as { pid: number }[]).some((p) => p.pid === found.pid));
      const again = mkdtempSync(join(dir, "t-"));
      const tmux2 = new Tmux(again, sessionScript(again, env, `${process.execPath} ${MVMCTL} attach -it ${sandboxId} ${found.pid}`));
      t.after(() => tmux2.kill());
      await tmux2.waitFor(/typed-42/);
      tmux2.type("exit 4");
      tmux2.send("Enter");
      await tmux2.waitFor(/^DONE$/m);
      assert.match(tmux2.screen(), /^EXIT=4$/m);
      assert.equal(await runnerExit, 4);
    });

    test("attach forwards stdin to a pipe process; the end of its input leaves the process's stdin open; -t on it is a usage error", async (t) => {
      const runner = spawn(process.execPath, [MVMCTL, "exec", "-i", sandboxId, "--", "/bin/sh", "-c", "echo cat-ready; exec cat"], { env, stdio: ["pipe", "pipe", "pipe"] });
      const runnerExit = new Promise<number | null>((resolve) => runner.on("close", (code) => resolve(code)));
      t.after(() => runner.kill("SIGKILL"));
      let ran = "";
      runner.stdout.on("data", (c: Buffer) => (ran += c.toString()));
      while (!ran.includes("cat-ready")) await new Promise((resolve) => setTimeout(resolve, 50));
      const ps = JSON.parse(execFileSync(process.execPath, [MVMCTL, "--json", "ps", sandboxId], { env, encoding: "utf8" })) as { pid: number; argv: string[] }[];
      const found = ps.find((p) => p.argv.includes("echo cat-ready; exec cat"));
      assert.ok(found, JSON.stringify(ps));

      const attach = spawn(process.execPath, [MVMCTL, "attach", sandboxId, String(found.pid)], { env, stdio: ["pipe", "pipe", "pipe"] });
      const attachExit = new Promise<number | null>((resolve) => attach.on("close", (code) => resolve(code)));
      let seen = "";
      let noted = "";
      attach.stdout.on("data", (c: Buffer) => (seen += c.toString()));
      attach.stderr.on("data", (c: Buffer) => (noted += c.toString()));
      while (!seen.includes("cat-ready")) await new Promise((resolve) => setTimeout(resolve, 50));
      attach.stdin.end("from-attach\n");
      // Both clients see cat's echo of the attached client's input.
      while (!ran.includes("from-attach") || !seen.includes("from-attach")) await new Promise((resolve) => setTimeout(resolve, 50));
      // The attached client's input ended; the starter still writes to the same, still open stdin.
      runner.stdin.write("from-starter\n");
      while (!seen.includes("from-starter")) await new Promise((resolve) => setTimeout(resolve, 50));
      attach.kill("SIGINT");
      assert.equal(await attachExit, 0, noted);
      assert.match(noted, /detached \(SIGINT\)/);

      const tty = spawnSync(process.execPath, [MVMCTL, "attach", "-t", sandboxId, String(found.pid)], { env, encoding: "utf8" });
      assert.equal(tty.status, 2);
      assert.match(tty.stderr, /-it needs a terminal on stdin/);
      runner.stdin.end();
      assert.equal(await runnerExit, 0);
      assert.equal(ran, "cat-ready\nfrom-attach\nfrom-starter\n");
    });

    test("ps lists a process started by another mvmctl; attach gets its earlier and live output; pkill ends it", async () => {
      const runner = spawn(process.execPath, [MVMCTL, "exec", sandboxId, "--", "/bin/sh", "-c", "echo first; while :; do sleep 0.2; echo tick; done"], {
        env,
        stdio: ["ignore", "pipe", "pipe"],
      });
      const runnerExit = new Promise<number | null>((resolve) => runner.on("close", (code) => resolve(code)));
      let ran = "";
      runner.stdout.on("data", (c: Buffer) => (ran += c.toString()));
      while (!ran.includes("first")) await new Promise((resolve) => setTimeout(resolve, 50));

      const ps = JSON.parse(execFileSync(process.execPath, [MVMCTL, "--json", "ps", sandboxId], { env, encoding: "utf8" })) as { pid: number; argv: string[] }[];
      const found = ps.find((p) => p.argv.includes("echo first; while :; do sleep 0.2; echo tick; done"));
      assert.ok(found, JSON.stringify(ps));
      const human = execFileSync(process.execPath, [MVMCTL, "ps", sandboxId], { env, encoding: "utf8" });
      assert.match(human, new RegExp(`^${found.pid}\\s`, "m"));

      const attach = spawn(process.execPath, [MVMCTL, "attach", sandboxId, String(found.pid)], { env, stdio: ["ignore", "pipe", "pipe"] });
      const attachExit = new Promise<number | null>((resolve) => attach.on("close", (code) => resolve(code)));
      let seen = "";
      attach.stdout.on("data", (c: Buffer) => (seen += c.toString()));
      // The backlog (from before the attach), then live lines.
      while (count(seen, /tick/) < 2) await new Promise((resolve) => setTimeout(resolve, 50));
      assert.match(seen, /^first\n/);

      const killed = spawnSync(process.execPath, [MVMCTL, "pkill", "--signal", "SIGKILL", sandboxId, String(found.pid)], { env, encoding: "utf8" });
      assert.equal(killed.status, 0, killed.stderr);
      // Both clients see the same end: SIGKILL, 128 + 9.
      assert.equal(await attachExit, 137);
      assert.equal(await runnerExit, 137);
      const gone = spawnSync(process.execPath, [MVMCTL, "attach", sandboxId, String(found.pid)], { env, encoding: "utf8" });
      assert.notEqual(gone.status, 0);
      assert.match(gone.stderr, /No running process with pid/);
    });
  });
});
