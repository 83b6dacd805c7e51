/**
 * The audit trail of an exec survives a kill -9 of its engine: exec.started is in the log before
 * the workload runs, and exec.finished is in the log once the exit is reported, even when the
 * engine dies before that entry's pipelined fdatasync.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseJsonStrict } from "@mvm/protocol";
import { loadOrCreateHostKey } from "../audit/keys.js";
import { auditFilePath } from "../audit/log.js";
import { tailAuditEntries } from "../audit/read.js";
import { verifyAuditFile } from "../audit/verify.js";
import { DEFAULT_IMAGE } from "../engine.js";
import { openEngine } from "../open.js";
import { sharedImagesDir, unavailableReason } from "./harness.js";

// An embedded engine that runs one exec, prints its receipt and the sandbox id, and SIGKILLs
// itself in the same tick: well inside the pipelined sync's delay.
const ENGINE = `
const m = await import(${JSON.stringify(new URL("../index.js", import.meta.url).href)});
const engine = await m.openEngine({ backends: ["namespace"] });
const sb = await engine.createSandbox({ image: process.env.IMAGE, acknowledgeContainerTier: true });
const started = await engine.exec(sb.id, { argv: ["/bin/sh", "-c", "exit 7"] }, {});
const exit = await started.exit;
process.stdout.write(JSON.stringify({ sandboxId: sb.id, exitCode: exit.exitCode, auditEntryId: exit.receipt.auditEntryId }) + "\\n");
process.kill(process.pid, "SIGKILL");
`;

test("an exec's started and finished entries survive kill -9 of the engine right after the exit is reported", { skip: unavailableReason() }, async () => {
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-exec-audit-"));
  try {
    const child = spawn(process.execPath, ["--input-type=module", "-e", ENGINE], {
      env: { ...process.env, MVM_STATE_DIR: stateDir, MVM_IMAGES_DIR: sharedImagesDir(), IMAGE: DEFAULT_IMAGE },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    const [, signal] = (await once(child, "exit")) as [number | null, string | null];
    assert.equal(signal, "SIGKILL", `engine ended otherwise: ${out}`);
    const reported = parseJsonStrict(out.trim()) as { sandboxId: string; exitCode: number; auditEntryId: string };
    assert.equal(reported.exitCode, 7);

    const key = await loadOrCreateHostKey(stateDir);
    const verified = await verifyAuditFile(auditFilePath(stateDir), key.publicKey, { signatures: "all" });
    assert.ok(verified.ok, JSON.stringify(verified));
    const entries = (await tailAuditEntries(auditFilePath(stateDir), 1000)).map((e) => e.entry!);
    const ofExec = entries.filter((e) => e.event.type.startsWith("exec.") && "sandboxId" in e.event && e.event.sandboxId === reported.sandboxId);
    assert.deepEqual(
      ofExec.map((e) => e.event.type),
      ["exec.started", "exec.finished"],
    );
    const [startedEntry, finishedEntry] = ofExec as [(typeof ofExec)[number], (typeof ofExec)[number]];
    assert.ok(startedEntry.seq < finishedEntry.seq);
    assert.equal((startedEntry.event as { execId: string }).execId, (finishedEntry.event as { execId: string }).execId);
    assert.equal((finishedEntry.event as { exitCode: number }).exitCode, 7);
    assert.equal(reported.auditEntryId, `aud_${finishedEntry.seq}_${finishedEntry.hash.slice(0, 16)}`);
  } finally {
    // The next engine on this state directory reaps what the killed one left.
    const again = await openEngine({ stateDir, imagesDir: sharedImagesDir(), backends: ["namespace"] });
    await again.close();
    assert.deepEqual(await readdir(join(stateDir, "sandboxes")).catch(() => []), []);
    await rm(stateDir, { recursive: true, force: true });
  }
});
