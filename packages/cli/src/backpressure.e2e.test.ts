/**
 * Exec output is back-pressured end to end: 2 GiB of output (1 GiB on stdout and 1 GiB on stderr
 * at once, each stream at the API's 1 GiB cap) through a real daemon (`mvmctl daemon`, namespace
 * backend) to a consumer that first does not read at all. The workload is held in write(2) while
 * nobody reads, daemon and mvmctl stay small, and every byte arrives once reading resumes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MVMCTL, cliEnv, skipWithoutImages, startDaemon, type TestDaemon } from "./_test/e2e-env.js";
import { DEFAULT_IMAGE } from "@mvm/engine";
import { DaemonClient } from "@mvm/sdk";
import { findDescendants, memoryKiB, peakRecorder, waitWriterStalled } from "./_test/writers.js";

const MiB = 1024 * 1024;
/** Output per stream: the API's cap, so nothing is cut. */
const STREAM_BYTES = 1024 * MiB;
const WRITER = ["head", "-c", String(STREAM_BYTES), "/dev/zero"];
const SCRIPT = `${WRITER.join(" ")} >&2 & ${WRITER.join(" ")}; wait`;
/** Generous ceiling on the peak RSS of the daemon and of mvmctl, in KiB. */
const PEAK_LIMIT_KIB = 300 * 1024;
/** Bytes a held writer may get out: the agent's window and read-ahead, pipe and socket buffers. */
const HELD_WRITE_LIMIT = 16 * MiB;

const skip = skipWithoutImages;

const ZEROS = Buffer.alloc(MiB);

/** True when every byte of `chunk` is zero. */
function allZero(chunk: Uint8Array): boolean {
  const b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  for (let at = 0; at < b.byteLength; at += ZEROS.byteLength) {
    const part = b.subarray(at, at + ZEROS.byteLength);
    if (!part.equals(ZEROS.subarray(0, part.byteLength))) return false;
  }
  return true;
}

/** Counts bytes, and the chunks that held something other than zeros. */
class Tally {
  bytes = 0;
  otherChunks = 0;
  add(chunk: Uint8Array): void {
    this.bytes += chunk.byteLength;
    if (!allZero(chunk)) this.otherChunks += 1;
  }
}

test("2 GiB of exec output through the daemon to a consumer that pauses: bounded memory, nothing lost", { skip, timeout: 600_000 }, async (t) => {
  // Directly under the temporary directory: the engine's state must be searchable by the sandbox's uid.
  const dir = mkdtempSync(join(tmpdir(), "mvm-backpressure-"));
  chmodSync(dir, 0o711);
  let daemon: TestDaemon | undefined;
  let client: DaemonClient | undefined;
  t.after(async () => {
    await client?.close();
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  daemon = await startDaemon(cliEnv(dir), join(dir, "run", "d.sock"));
  const daemonPid = daemon.child.pid!;
  const socketPath = daemon.socketPath;
  client = new DaemonClient({ socketPath });
  const sb = await client.createSandbox({ backend: "namespace", image: DEFAULT_IMAGE });

  await t.test("the SDK's daemon client reads only as fast as its handlers take output", async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let holding = true;
    const out = new Tally();
    const err = new Tally();
    const take = (tally: Tally) => async (chunk: Uint8Array): Promise<void> => {
      if (holding) await held;
      tally.add(chunk);
    };
    const started = await client!.exec(sb.id, { argv: ["/bin/sh", "-c", SCRIPT], maxOutputBytes: STREAM_BYTES }, { onStdout: take(out), onStderr: take(err) });

    const writers = await findDescendants(daemonPid, WRITER, 2);
    for (const pid of writers) {
      const written = await waitWriterStalled(pid);
      assert.ok(written < HELD_WRITE_LIMIT, `a writer got ${written} bytes out while nobody read`);
    }
    const heldRssKiB = memoryKiB(daemonPid, "VmRSS");
    holding = false;
    release();
    const exit = await started.exit;
    assert.equal(exit.exitCode, 0);
    assert.deepEqual([exit.stdoutBytes, exit.stderrBytes, exit.stdoutTruncated, exit.stderrTruncated], [STREAM_BYTES, STREAM_BYTES, false, false]);
    assert.deepEqual([out.bytes, err.bytes, out.otherChunks, err.otherChunks], [STREAM_BYTES, STREAM_BYTES, 0, 0]);
    const peakKiB = memoryKiB(daemonPid, "VmHWM");
    t.diagnostic(`daemon RSS while held ${heldRssKiB} KiB, daemon peak ${peakKiB} KiB`);
    assert.ok(peakKiB < PEAK_LIMIT_KIB, `daemon peak RSS ${peakKiB} KiB`);
  });

  await t.test("mvmctl exec writes only as fast as its stdout and stderr are read", async (st) => {
    const peakFile = join(dir, "mvmctl.peak");
    const cli = spawn(process.execPath, ["--require", peakRecorder(dir), MVMCTL, "--socket", socketPath, "exec", sb.id, "--", "/bin/sh", "-c", SCRIPT], {
      env: { ...cliEnv(dir), MVM_TEST_PEAK_FILE: peakFile },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const closed = new Promise<number | null>((resolve) => cli.on("close", (code) => resolve(code)));
    // A failed check leaves nobody reading mvmctl's output: end it rather than leave it waiting.
    st.after(() => {
      if (cli.exitCode === null && cli.signalCode === null) cli.kill("SIGKILL");
    });
    cli.stdin.end();
    // Nobody reads mvmctl's stdout or stderr until both writers are held.
    const writers = await findDescendants(daemonPid, WRITER, 2);
    for (const pid of writers) {
      const written = await waitWriterStalled(pid);
      assert.ok(written < HELD_WRITE_LIMIT, `a writer got ${written} bytes out while nobody read`);
    }
    const heldRssKiB = memoryKiB(cli.pid!, "VmRSS");

    const out = new Tally();
    let errZeros = 0;
    let notes = "";
    cli.stdout.on("data", (c: Buffer) => out.add(c));
    cli.stderr.on("data", (c: Buffer) => {
      // mvmctl's own notes (if any) share stderr with the command's zero bytes.
      if (allZero(c)) {
        errZeros += c.byteLength;
        return;
      }
      const text = c.filter((b) => b !== 0);
      errZeros += c.byteLength - text.byteLength;
      if (notes.length < 4096) notes += Buffer.from(text).toString();
    });
    assert.equal(await closed, 0, notes);
    assert.deepEqual([out.bytes, errZeros, out.otherChunks], [STREAM_BYTES, STREAM_BYTES, 0]);
    const cliPeakKiB = Number(readFileSync(peakFile, "utf8"));
    const daemonPeakKiB = memoryKiB(daemonPid, "VmHWM");
    t.diagnostic(`mvmctl RSS while held ${heldRssKiB} KiB, mvmctl peak ${cliPeakKiB} KiB, daemon peak ${daemonPeakKiB} KiB`);
    assert.ok(cliPeakKiB < PEAK_LIMIT_KIB, `mvmctl peak RSS ${cliPeakKiB} KiB`);
    assert.ok(daemonPeakKiB < PEAK_LIMIT_KIB, `daemon peak RSS ${daemonPeakKiB} KiB`);
  });
});
