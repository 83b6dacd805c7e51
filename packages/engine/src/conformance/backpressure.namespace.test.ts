/**
 * Exec output back-pressure in an embedded engine on the namespace backend: a consumer that does
 * not take its output holds the workload in write(2), and nothing is lost when it resumes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { INITIAL_STREAM_WINDOW } from "@mvm/protocol";
import { create, testEngine, unavailableReason } from "./harness.js";
import { findDescendants, waitWriterStalled } from "./_writer-stall.js";

const MiB = 1024 * 1024;
const ZEROS = Buffer.alloc(INITIAL_STREAM_WINDOW);
const skip = unavailableReason();

test("a consumer that holds its output stops the workload; everything arrives once it takes it", { skip, timeout: 180_000 }, async (t) => {
  const te = await testEngine();
  t.after(() => te.close());
  const sb = await create(te.engine, "namespace");
  // A size no other test uses, so the writer is easy to tell apart.
  const total = 256 * MiB + 4099;

  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  let calls = 0;
  let bytes = 0;
  let nonZero = 0; // chunks with a byte that is not zero
  const started = await te.engine.exec(
    sb.id,
    { argv: ["/usr/bin/head", "-c", String(total), "/dev/zero"], maxOutputBytes: total },
    {
      onStdout: async (chunk) => {
        calls += 1;
        bytes += chunk.byteLength;
        if (!Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).equals(ZEROS.subarray(0, chunk.byteLength))) nonZero += 1;
        if (calls === 1) await held;
        // An asynchronous consumer: every chunk waits a turn of the event loop.
        else await new Promise<void>((resolve) => setImmediate(resolve));
      },
    },
  );

  const [writer] = await findDescendants(process.pid, ["/usr/bin/head", "-c", String(total), "/dev/zero"]);
  assert.ok(writer !== undefined, "the workload's host pid was not found");
  const written = await waitWriterStalled(writer);
  // Held: the consumer got one chunk, the agent at most one window; the workload waits in write(2).
  assert.equal(calls, 1);
  assert.ok(bytes <= INITIAL_STREAM_WINDOW);
  assert.ok(written < 8 * MiB, `the workload wrote ${written} bytes while its output was held`);

  release();
  const exit = await started.exit;
  assert.equal(exit.exitCode, 0);
  assert.equal(exit.stdoutTruncated, false);
  assert.equal(exit.stdoutBytes, total);
  assert.equal(bytes, total);
  assert.equal(nonZero, 0);
});

test("an output handler that rejects ends the exec with its error and kills the process", { skip, timeout: 60_000 }, async (t) => {
  const te = await testEngine();
  t.after(() => te.close());
  const sb = await create(te.engine, "namespace");
  const boom = new Error("consumer failed");
  const started = await te.engine.exec(sb.id, { argv: ["/usr/bin/yes"] }, { onStdout: async () => Promise.reject(boom) });
  await assert.rejects(started.exit, (err: unknown) => err === boom);
  // The sandbox is still usable and the writer is gone.
  const ps = await te.engine.listProcesses(sb.id);
  assert.deepEqual(ps.filter((p) => p.argv[0] === "/usr/bin/yes"), []);
});
