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
});
