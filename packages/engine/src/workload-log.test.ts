/** The workload log keeps a bounded window of the latest output, whole characters, as lines. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { MAX_LOG_LINE_CHARS } from "@mvm/protocol";
import { WorkloadLog } from "./workload-log.js";

describe("WorkloadLog", () => {
  it("splits output into lines per stream and keeps a character split across chunks whole", () => {
    const log = new WorkloadLog(1024);
    const euro = Buffer.from("€\n");
    log.add(3, "stdout", Buffer.from("a\nb\n"));
    log.add(3, "stderr", euro.subarray(0, 1));
    log.add(3, "stderr", euro.subarray(1));
    assert.deepEqual(
      log.lines().lines.map((l) => `${l.stream} ${l.proc} ${l.text}`),
      ["stdout 3 a", "stdout 3 b", "stderr 3 €"],
    );
    assert.equal(log.lines().truncated, false);
  });

  it("drops the oldest output over its bound and says so; cuts long lines", () => {
    const log = new WorkloadLog(100);
    for (let i = 0; i < 50; i++) log.add(1, "stdout", Buffer.from(`line ${i}\n`));
    const { lines, truncated } = log.lines();
    assert.equal(truncated, true);
    assert.equal(lines.at(-1)?.text, "line 49");
    assert.ok(lines.length < 20);
    const big = new WorkloadLog(1024 * 1024);
    big.add(1, "stdout", Buffer.alloc(MAX_LOG_LINE_CHARS + 10, 0x61));
    assert.match(big.lines().lines[0]!.text, /\[cut\]$/);
    const huge = new WorkloadLog(64);
    huge.add(1, "stdout", Buffer.alloc(1000, 0x62));
    assert.equal(huge.lines().lines[0]!.text.length, 64);
  });

  it("a cursor (seq) gives only what arrived after it, and says when some of that was dropped", () => {
    const log = new WorkloadLog(64);
    log.add(1, "stdout", Buffer.from("one\n"));
    const first = log.lines();
    assert.deepEqual(first.lines.map((l) => l.text), ["one"]);
    assert.equal(log.lines(first.seq).lines.length, 0);
    log.add(1, "stdout", Buffer.from("two\n"));
    log.add(2, "stderr", Buffer.from("three\n"));
    const second = log.lines(first.seq);
    assert.deepEqual(second.lines.map((l) => `${l.proc} ${l.text}`), ["1 two", "2 three"]);
    assert.equal(second.truncated, false);
    // More than the window arrives before the next read: the reader is told.
    for (let i = 0; i < 20; i++) log.add(1, "stdout", Buffer.from(`line ${i}\n`));
    const third = log.lines(second.seq);
    assert.equal(third.truncated, true);
    assert.equal(third.lines.at(-1)?.text, "line 19");
    assert.equal(log.lines(third.seq).truncated, false);
    // One chunk larger than the window is kept as its tail and marked.
    log.add(1, "stdout", Buffer.alloc(100, 0x61));
    assert.equal(log.lines(third.seq).truncated, true);
  });
});
