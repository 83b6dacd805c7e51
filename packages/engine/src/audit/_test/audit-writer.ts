/**
 * Test fixture run as a child process: `node audit-writer.js <stateDir> burst|written|hold|<count>`.
 * burst: appends events forever, 32 in flight, printing each acknowledged seq on its own line.
 * written: the same, one at a time, each appended with `{ wait: "written" }` (acknowledged before its sync).
 * <count>: appends that many events, 8 in flight, printing each acknowledged seq, then exits 0.
 * hold: opens the log, appends one event, prints "ready" and waits to be killed.
 * On a failure it prints "error <code> <message>" and exits 3.
 */
import { argvDigest } from "../entry.js";
import { openStateAuditLog } from "../log.js";

const [stateDir, mode] = process.argv.slice(2);
const count = mode !== undefined && /^[0-9]+$/.test(mode) ? Number(mode) : undefined;
if (stateDir === undefined || (mode !== "burst" && mode !== "written" && mode !== "hold" && count === undefined)) {
  process.stderr.write("usage: audit-writer.js STATE_DIR burst|written|hold|COUNT\n");
  process.exit(2);
}

try {
  const log = await openStateAuditLog(stateDir);
  const sandboxId = "sbx_abcdefghijklmnopqrst";
  if (mode === "hold") {
    await log.append({ type: "policy.changed", policyId: "p1", previousDigest: null, policyDigest: "0".repeat(64) });
    process.stdout.write("ready\n");
    setInterval(() => undefined, 1 << 30);
  } else if (count !== undefined) {
    let n = 0;
    const worker = async (): Promise<void> => {
      while (n < count) {
        const i = n++;
        const r = await log.append({ type: "exec.started", sandboxId, execId: `ex_${process.pid}_${i}`, argvDigest: argvDigest(["echo", String(i)]), argc: 2 });
        process.stdout.write(`${r.seq}\n`);
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    await log.close();
  } else if (mode === "written") {
    for (let i = 0; ; i++) {
      const r = await log.append({ type: "exec.finished", sandboxId, execId: `ex_${i}`, exitCode: 0, signal: null, timedOut: false, durationMs: 1 }, { wait: "written" });
      process.stdout.write(`${r.seq}\n`);
    }
  } else {
    let n = 0;
    const worker = async (): Promise<never> => {
      for (;;) {
        const i = n++;
        const r = await log.append({ type: "exec.started", sandboxId, execId: `ex_${i}`, argvDigest: argvDigest(["echo", String(i)]), argc: 2 });
        process.stdout.write(`${r.seq}\n`);
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
  }
} catch (err) {
  const e = err as { code?: string; message?: string };
  process.stdout.write(`error ${e.code ?? "?"} ${e.message ?? String(err)}\n`);
  process.exit(3);
}
