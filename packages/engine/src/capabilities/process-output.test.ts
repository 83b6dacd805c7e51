import { test } from "node:test";
import assert from "node:assert/strict";
import { AbortedError, NotFoundError, TransportError, type ExitInfo } from "@mvm/protocol";
import { MAX_ATTACH_LAG_BYTES, ProcessOutput } from "./process-output.js";

const EXIT: ExitInfo = {
  exitCode: 0,
  signal: null,
  timedOut: false,
  oomKilled: false,
  durationMs: 1,
  stdoutBytes: 0,
  stderrBytes: 0,
  stdoutTruncated: false,
  stderrTruncated: false,
  receipt: { sandboxId: "sbx_abcdefghijklmnopqrst", proc: 1, imageDigest: `sha256:${"0".repeat(64)}`, backend: "namespace", startedAt: "", finishedAt: "" },
};

function deferredExit(): { exit: Promise<ExitInfo>; end: () => void } {
  let end!: () => void;
  const exit = new Promise<ExitInfo>((resolve) => (end = () => resolve(EXIT)));
  return { exit, end };
}

test("the backlog keeps the latest bytes across streams, in order, trimming the oldest piece", async () => {
  const out = new ProcessOutput(6);
  const { exit, end } = deferredExit();
  out.setExit(exit);
  out.record("stdout", Buffer.from("abcd"));
  out.record("stderr", Buffer.from("ef"));
  out.record("stdout", Buffer.from("gh"));
  const seen: string[] = [];
  const attached = out.attach({ onStdout: (c) => void seen.push(`o:${Buffer.from(c)}`), onStderr: (c) => void seen.push(`e:${Buffer.from(c)}`) }, undefined);
  out.record("stderr", Buffer.from("live"));
  end();
  assert.equal(await attached, EXIT);
  assert.deepEqual(seen, ["o:cd", "e:ef", "o:gh", "e:live"]);
});

test("one chunk larger than the backlog keeps its tail; a backlog of 0 keeps nothing", async () => {
  const big = new ProcessOutput(3);
  const small = new ProcessOutput(0);
  const { exit, end } = deferredExit();
  big.setExit(exit);
  small.setExit(exit);
  big.record("stdout", Buffer.from("0123456789"));
  small.record("stdout", Buffer.from("0123456789"));
  const a: Buffer[] = [];
  const b: Buffer[] = [];
  const pa = big.attach({ onStdout: (c) => void a.push(Buffer.from(c)) }, undefined);
  const pb = small.attach({ onStdout: (c) => void b.push(Buffer.from(c)) }, undefined);
  end();
  await Promise.all([pa, pb]);
  assert.equal(Buffer.concat(a).toString(), "789");
  assert.equal(Buffer.concat(b).toString(), "");
});

test("an attached client that does not take its output is detached past the lag bound; recording goes on", async () => {
  const out = new ProcessOutput(1024);
  const { exit, end } = deferredExit();
  out.setExit(exit);
  const stuck = out.attach({ onStdout: () => new Promise(() => {}) }, undefined);
  const chunk = Buffer.alloc(64 * 1024);
  for (let sent = 0; sent <= MAX_ATTACH_LAG_BYTES + 2 * chunk.length; sent += chunk.length) out.record("stdout", chunk);
  await assert.rejects(stuck, TransportError);
  // A new client still attaches and gets the (bounded) backlog.
  let got = 0;
  const fresh = out.attach({ onStdout: (c) => void (got += c.byteLength) }, undefined);
  end();
  await fresh;
  assert.equal(got, 1024);
});

test("aborting detaches with AbortedError; attaching before the start is known is NotFoundError", async () => {
  const early = new ProcessOutput(16);
  await assert.rejects(early.attach({}, undefined), NotFoundError);
  const out = new ProcessOutput(16);
  const { exit, end } = deferredExit();
  out.setExit(exit);
  const ac = new AbortController();
  const attached = out.attach({}, ac.signal);
  ac.abort();
  await assert.rejects(attached, AbortedError);
  end();
});
