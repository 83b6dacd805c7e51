/**
 * Plan mode and receipts through the daemon: a real engine (namespace backend, the default image)
 * served on a Unix socket, reached with DaemonClient, so the plan and the receipts cross the wire
 * and are schema-checked on the way back.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { existsSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { auditFilePath, loadOrCreateHostKey, openEngine, startDaemonServer, tailAuditEntries, verifyAuditFile } from "@mvm/engine";
import { AdmissionError, PolicyDeniedError } from "@mvm/protocol";
import { DaemonClient } from "./daemon-client.js";
import { Sandbox } from "./sandbox.js";

const IMAGES = "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const imagePresent = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);

test(
  "through the daemon: Sandbox.plan boots nothing, Sandbox.create({ plan }) admits it once, and every result carries a receipt naming its audit entry",
  { skip: imagePresent ? false : "needs the default image in /var/lib/mvm: run scripts/setup.sh" },
  async (t) => {
    const root = await mkdtemp(join(tmpdir(), "mvm-sdk-plan-"));
    await chmod(root, 0o711);
    const stateDir = join(root, "state");
    const engine = await openEngine({ stateDir, imagesDir: IMAGES, backends: ["namespace"] });
    const server = await startDaemonServer({ engine, socketPath: join(root, "run", "mvmd.sock") });
    const client = new DaemonClient({ socketPath: server.socketPath });
    t.after(async () => {
      await client.close();
      await server.close();
      await engine.close();
      await rm(root, { recursive: true, force: true });
    });

    // This engine offers only the container tier: planning without a backend needs the caller's
    // acknowledgment; the plan then names its tier, so admitting it needs none.
    const plan = await Sandbox.plan({
      engine: client,
      image: IMAGE,
      ttlSeconds: 300,
      command: ["python3", "-c", "print(6*7)"],
      validForSeconds: 120,
      acknowledgeContainerTier: true,
    });
    assert.equal(plan.plan.ir.requiredTier, "container");
    assert.equal(plan.plan.ir.ttlSeconds, 300);
    assert.equal((await client.listSandboxes()).length, 0, "planning booted nothing");

    await using sb = await Sandbox.create({ engine: client, plan });
    assert.equal(sb.receipt?.planId, plan.plan.planId);
    const r = await sb.commands.run(["python3", "-c", "print(6*7)"]);
    assert.equal(r.stdout, "42\n");
    assert.equal(r.receipt.planId, plan.plan.planId);
    await assert.rejects(sb.commands.run(["id"]), PolicyDeniedError, "the plan admits only its command");
    const w = await sb.files.write("/work/out.txt", "x");
    await assert.rejects(Sandbox.create({ engine: client, plan }), (err: unknown) => err instanceof AdmissionError && /replay/.test(err.message));

    const key = await loadOrCreateHostKey(stateDir);
    assert.equal((await verifyAuditFile(auditFilePath(stateDir), key.publicKey, { signatures: "all" })).ok, true);
    const entries = (await tailAuditEntries(auditFilePath(stateDir), 1000)).map((s) => s.entry!);
    const find = (id: string | undefined) => entries.find((e) => `aud_${e.seq}_${e.hash.slice(0, 16)}` === id)?.event.type;
    assert.equal(find(sb.receipt?.auditEntryId), "sandbox.created");
    assert.equal(find(r.receipt.auditEntryId), "exec.finished");
    assert.equal(find(w.receipt?.auditEntryId), "file.written");
  },
);
