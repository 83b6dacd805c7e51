import { test } from "node:test";
import assert from "node:assert/strict";
import { ProgressRenderer, formatProgressLine, progressMode } from "./progress.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { CapturedStream, cli } from "./_test/test-io.js";

test("progress mode: off with --json, tty on a terminal, plain otherwise", () => {
  assert.equal(progressMode(new CapturedStream(true), true), "off");
  assert.equal(progressMode(new CapturedStream(true), false), "tty");
  assert.equal(progressMode(new CapturedStream(false), false), "plain");
});

test("a progress line has the phase, the message and a bar when the fraction is known", () => {
  assert.equal(formatProgressLine({ phase: "resolve", message: "debian:bookworm" }, 80), "resolve: debian:bookworm");
  assert.equal(formatProgressLine({ phase: "unpack", message: "rootfs", fraction: 0.5 }, 80), `unpack: rootfs [${"=".repeat(12)}>${" ".repeat(11)}]  50%`);
  assert.equal(formatProgressLine({ phase: "hash", message: "x", fraction: 1 }, 80), `hash: x [${"=".repeat(24)}] 100%`);
  assert.equal(formatProgressLine({ phase: "hash", message: "x", fraction: 7 }, 80), `hash: x [${"=".repeat(24)}] 100%`);
  assert.equal(formatProgressLine({ phase: "hash", message: "x", fraction: -1 }, 80), `hash: x [>${" ".repeat(23)}]   0%`);
  assert.equal(formatProgressLine({ phase: "hash", message: "x", fraction: Number.NaN }, 80), "hash: x");
});

test("a progress line fits the width and shows control characters escaped", () => {
  const long = formatProgressLine({ phase: "download", message: "m".repeat(500), fraction: 0.25 }, 60);
  assert.equal(long.length, 60);
  assert.match(long, /^download: m+… \[={6}>/);
  const hostile = formatProgressLine({ phase: "build", message: "a\x1b[2Jb\rc\u202e" }, 80);
  assert.equal(hostile, "build: a\\x1b[2Jb\\x0dc\\u{202e}");
});

test("tty mode redraws one line and clears it when done", () => {
  const s = new CapturedStream(true, 40);
  const r = new ProgressRenderer(s, "tty");
  r.update({ phase: "download", message: "base", fraction: 0.1 });
  r.update({ phase: "download", message: "base", fraction: 0.2 });
  r.done();
  const text = s.text();
  assert.equal(text.split("\r\x1b[2K").length - 1, 3);
  assert.ok(!text.includes("\n"));
  assert.ok(text.endsWith("\r\x1b[2K"));
  for (const part of text.split("\r\x1b[2K")) assert.ok(part.length <= 39);
});

test("plain mode prints a line per phase, per tenth of progress, and per message without a fraction", () => {
  const s = new CapturedStream(false);
  const r = new ProgressRenderer(s, "plain");
  r.update({ phase: "download", message: "base", fraction: 0.01 });
  r.update({ phase: "download", message: "base", fraction: 0.05 });
  r.update({ phase: "download", message: "unpacked 3%", fraction: 0.06 });
  r.update({ phase: "download", message: "base", fraction: 0.15 });
  r.update({ phase: "unpack", message: "rootfs" });
  r.update({ phase: "unpack", message: "rootfs" });
  r.update({ phase: "unpack", message: "dropped 8 device nodes" });
  r.done();
  const lines = s.text().split("\n");
  assert.equal(lines.pop(), "");
  assert.deepEqual(
    lines.map((l) => l.replace(/ \[.*$/, "")),
    ["download: base", "download: base", "unpack: rootfs", "unpack: dropped 8 device nodes"],
  );
  assert.match(lines[1] ?? "", /  15%$/);
  assert.ok(!s.text().includes("\x1b"));
});

test("tty mode on a terminal reporting no size uses 80 columns", () => {
  const s = new CapturedStream(true, 0);
  new ProgressRenderer(s, "tty").update({ phase: "unpack", message: "m".repeat(100), fraction: 0.5 });
  assert.equal(s.text().length, "\r\x1b[2K".length + 79);
});

test("off mode prints nothing", () => {
  const s = new CapturedStream(true);
  const r = new ProgressRenderer(s, "off");
  r.update({ phase: "x", message: "y", fraction: 0.5 });
  r.done();
  assert.equal(s.text(), "");
});

test("image build shows progress on stderr: bar on a terminal, lines in a pipe, nothing with --json", async () => {
  const events = [
    { phase: "resolve", message: "debian:bookworm" },
    { phase: "download", message: "packages", fraction: 0.5 },
  ];
  const tty = new FakeEngine();
  tty.progress = events;
  const onTty = await cli(["image", "build", "debian:bookworm"], { engine: tty, stderrTTY: true });
  assert.equal(onTty.code, 0);
  assert.match(onTty.stderr, /\r\x1b\[2Kdownload: packages \[/);
  assert.equal(onTty.stdout, `sha256:${"ab".repeat(32)}\n`);

  const piped = new FakeEngine();
  piped.progress = events;
  const onPipe = await cli(["image", "build", "debian:bookworm"], { engine: piped });
  assert.equal(onPipe.stderr, `resolve: debian:bookworm\ndownload: packages [${"=".repeat(12)}>${" ".repeat(11)}]  50%\n`);

  const json = new FakeEngine();
  json.progress = events;
  const onJson = await cli(["image", "build", "debian:bookworm", "--json"], { engine: json, stderrTTY: true });
  assert.equal(onJson.stderr, "");
  assert.equal(JSON.parse(onJson.stdout).digest, `sha256:${"ab".repeat(32)}`);
});

test("run and create show progress only when creating the sandbox builds an image", async () => {
  for (const argv of [["run", "--", "true"], ["create"]]) {
    const booting = new FakeEngine();
    booting.progress = [{ phase: "boot", message: "starting sandbox" }];
    const quiet = await cli(argv, { engine: booting, env: { MVM_ACK_CONTAINER_TIER: "1" } });
    const notice = /^sandbox sbx_[a-z2-7]{20} on container \(shared host kernel\)\n$/;
    assert.match(quiet.stderr, notice, argv.join(" "));

    const building = new FakeEngine();
    building.progress = [{ phase: "download", message: "packages", fraction: 0.3 }, { phase: "boot", message: "starting sandbox" }];
    const shown = await cli(argv, { engine: building, env: { MVM_ACK_CONTAINER_TIER: "1" } });
    const progressLine = `download: packages [${"=".repeat(7)}>${" ".repeat(16)}]  30%\n`;
    assert.ok(shown.stderr.startsWith(progressLine), argv.join(" "));
    assert.match(shown.stderr.slice(progressLine.length), notice, argv.join(" "));
  }
});
