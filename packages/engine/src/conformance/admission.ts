/**
 * Conformance suite, admission and audit: every sandbox is admitted through a signed plan before
 * anything boots, refusals leave nothing behind, and what happened lands in a log that verifies.
 * Run on a real backend by admission.namespace.test.ts and admission.vm.test.ts.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { chmod, readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  AdmissionError,
  PolicyDeniedError,
  UnsupportedCapabilityError,
  canonicalJson,
  requestFromPlan,
  type BackendName,
  type CreateSandboxRequest,
  type SignedPlan,
} from "@mvm/protocol";
import { DEFAULT_IMAGE } from "../engine.js";
import { createPlan, signPlan } from "../admission/plan.js";
import { loadOrCreateHostKey } from "../audit/keys.js";
import { auditFilePath } from "../audit/log.js";
import { argvDigest, sha256Hex, type AuditEntry } from "../audit/entry.js";
import { verifyAuditFile } from "../audit/verify.js";
import { tailAuditEntries } from "../audit/read.js";
import { run, testEngine, unavailableReason, waitFor, type TestEngine } from "./harness.js";

/** Every entry of a state directory's audit log, after checking the whole chain and every signature. */
export async function auditEntries(stateDir: string): Promise<AuditEntry[]> {
  const key = await loadOrCreateHostKey(stateDir);
  const verified = await verifyAuditFile(auditFilePath(stateDir), key.publicKey, { signatures: "all" });
  assert.ok(verified.ok, `audit log verifies: ${JSON.stringify(verified)}`);
  const stored = await tailAuditEntries(auditFilePath(stateDir), 1_000_000);
  return stored.map((s) => {
    assert.ok(s.entry, `line ${s.line} parses`);
    return s.entry;
  });
}

function entryOf(entries: readonly AuditEntry[], auditEntryId: string | undefined): AuditEntry {
  const m = /^aud_(\d+)_([0-9a-f]{16})$/.exec(auditEntryId ?? "");
  assert.ok(m, `receipt names an audit entry: ${auditEntryId}`);
  const entry = entries.find((e) => e.seq === Number(m[1]));
  assert.ok(entry, `entry ${m[1]} exists`);
  assert.equal(entry.hash.slice(0, 16), m[2]);
  return entry;
}

function eventsFor(entries: readonly AuditEntry[], sandboxId: string): string[] {
  return entries.filter((e) => "sandboxId" in e.event && e.event.sandboxId === sandboxId).map((e) => e.event.type);
}

async function sandboxDirs(stateDir: string): Promise<string[]> {
  return readdir(join(stateDir, "sandboxes")).catch(() => []);
}

/** Asserts no sandbox directory appeared since `before` (ones being removed may still vanish). */
async function noNewSandbox(stateDir: string, before: readonly string[], message: string): Promise<void> {
  const added = (await sandboxDirs(stateDir)).filter((d) => !before.includes(d));
  assert.deepEqual(added, [], message);
}

export function admissionSuite(backend: BackendName, options: { full: boolean; skip?: string | undefined }): void {
  const skip = options.skip ?? unavailableReason();
  const request = (extra: Partial<CreateSandboxRequest> = {}): CreateSandboxRequest => ({ backend, image: DEFAULT_IMAGE, ttlSeconds: 600, ...extra });

  describe(`${backend} backend: admission through signed plans, and the audit log`, { skip }, () => {
    let t: TestEngine;
    before(async () => {
      t = await testEngine();
    });
    after(async () => t?.close());

    test("a live create is admitted through a plan the engine signs, and every action is in a log that verifies, with receipts", async () => {
      const secretValue = "s3cr3t-value-never-logged";
      const sb = await t.engine.createSandbox(request({ env: { API_TOKEN_VALUE: secretValue } }));
      assert.match(sb.receipt?.planId ?? "", /^sha256:[0-9a-f]{64}$/);
      const argv = ["/bin/sh", "-c", `echo "$API_TOKEN_VALUE" | wc -c`];
      const ran = await run(t.engine, sb.id, argv);
      assert.equal(ran.exit.exitCode, 0);
      assert.equal(ran.exit.receipt.planId, sb.receipt?.planId);
      const written = await t.engine.writeFile(sb.id, "/work/a.txt", Buffer.from("hello"));
      const policy = await t.engine.setNetworkPolicy(sb.id, { version: 1, default: "deny", rules: [] });
      const killed = await t.engine.killSandbox(sb.id);

      const entries = await auditEntries(t.stateDir);
      const admitted = entries.find((e) => e.event.type === "plan.admitted" && e.event.planId === sb.receipt?.planId);
      assert.ok(admitted, "the plan's admission is recorded");
      const created = entryOf(entries, sb.receipt?.auditEntryId);
      assert.ok(admitted.seq < created.seq, "admission is recorded before the sandbox is");
      assert.deepEqual(created.event, { type: "sandbox.created", sandboxId: sb.id, planId: sb.receipt?.planId, imageDigest: sb.image.digest, backend });

      const finished = entryOf(entries, ran.exit.receipt.auditEntryId);
      assert.equal(finished.event.type, "exec.finished");
      const started = entries.find((e) => e.event.type === "exec.started" && e.event.sandboxId === sb.id);
      assert.ok(started && started.event.type === "exec.started" && finished.event.type === "exec.finished");
      assert.equal(started.event.argvDigest, argvDigest(argv));
      assert.equal(started.event.execId, finished.event.execId);
      assert.equal(finished.event.exitCode, 0);

      const file = entryOf(entries, written.receipt?.auditEntryId);
      assert.deepEqual(file.event, {
        type: "file.written",
        sandboxId: sb.id,
        pathDigest: sha256Hex("/work/a.txt"),
        sizeBytes: 5,
        contentSha256: sha256Hex("hello"),
      });
      assert.equal(entryOf(entries, policy.receipt?.auditEntryId).event.type, "policy.changed");
      assert.deepEqual(entryOf(entries, killed.receipt?.auditEntryId).event, { type: "sandbox.killed", sandboxId: sb.id, by: "caller" });
      assert.deepEqual(eventsFor(entries, sb.id), [
        "sandbox.created",
        "exec.started",
        "exec.finished",
        "file.written",
        "network.summary",
        "sandbox.killed",
      ]);
      const raw = await readFile(auditFilePath(t.stateDir), "utf8");
      assert.ok(!raw.includes(secretValue), "no environment value is in the log");
      assert.ok(!raw.includes("API_TOKEN_VALUE"), "no argv text is in the log");
    });

    test("plan mode boots nothing; the reviewed plan admits one sandbox, and a replay of it is refused", async () => {
      const before = await sandboxDirs(t.stateDir);
      const signed = await t.engine.planSandbox(request({ command: ["/bin/echo", "planned"] }), { validForSeconds: 600 });
      await noNewSandbox(t.stateDir, before, "planning created no sandbox");
      assert.equal((await t.engine.listSandboxes()).length, 0);
      assert.deepEqual(signed.plan.ir.command, { kind: "argv", argv: ["/bin/echo", "planned"] });
      assert.equal(signed.plan.notAfterMs - signed.plan.notBeforeMs, 600_000);

      const sb = await t.engine.createSandbox(requestFromPlan(signed));
      assert.equal(sb.receipt?.planId, signed.plan.planId);
      const ran = await run(t.engine, sb.id, ["/bin/echo", "planned"]);
      assert.equal(ran.stdout, "planned\n");
      await assert.rejects(run(t.engine, sb.id, ["/bin/echo", "other"]), PolicyDeniedError, "a plan for one command runs only that command");
      await t.engine.killSandbox(sb.id);

      const dirs = await sandboxDirs(t.stateDir);
      await assert.rejects(t.engine.createSandbox(requestFromPlan(signed)), (err: unknown) => err instanceof AdmissionError && /replay/.test(err.message));
      await noNewSandbox(t.stateDir, dirs, "a refused plan boots nothing");
      const entries = await auditEntries(t.stateDir);
      const last = entries.at(-1)!.event;
      assert.deepEqual(last, { type: "plan.denied", planId: signed.plan.planId, planDigest: sha256Hex(canonicalJson(signed)), reason: "nonce_replayed" });
    });

    test("a tampered, foreign, expired or not-yet-valid plan, or one the engine cannot enforce, is refused before anything boots, and each refusal is recorded", async () => {
      const host = await loadOrCreateHostKey(t.stateDir);
      const base = await t.engine.planSandbox(request());
      const now = Date.now();
      const resign = (edit: (p: SignedPlan["plan"]) => SignedPlan["plan"], key = host.privateKey): SignedPlan => {
        const { ir, profile, notBeforeMs, notAfterMs } = edit(base.plan);
        return signPlan(createPlan({ ir, profile, notBeforeMs, notAfterMs }), key);
      };
      const foreign = generateKeyPairSync("ed25519").privateKey;
      const tamperedTtl: SignedPlan = { ...base, plan: { ...base.plan, ir: { ...base.plan.ir, ttlSeconds: 7 * 24 * 3600 } } };
      const cases: { name: string; signed: SignedPlan; reason: string; message: RegExp }[] = [
        { name: "tampered after signing", signed: tamperedTtl, reason: "signature_invalid", message: /planId does not match|bad signature/ },
        { name: "signed by another key", signed: resign((p) => p, foreign), reason: "signature_invalid", message: /signed by key/ },
        { name: "expired", signed: resign((p) => ({ ...p, notBeforeMs: now - 7200_000, notAfterMs: now - 3600_000 })), reason: "plan_expired", message: /expired/ },
        {
          name: "not yet valid",
          signed: resign((p) => ({ ...p, notBeforeMs: now + 3600_000, notAfterMs: now + 7200_000 })),
          reason: "plan_not_yet_valid",
          message: /not valid before/,
        },
      ];
      const dirs = await sandboxDirs(t.stateDir);
      for (const c of cases) {
        // The request describes the (tampered) plan exactly, so only the plan's own checks can refuse it.
        await assert.rejects(t.engine.createSandbox(requestFromPlan(c.signed)), (err: unknown) => err instanceof AdmissionError && c.message.test(err.message), c.name);
        const last = (await auditEntries(t.stateDir)).at(-1)!.event;
        assert.ok(last.type === "plan.denied" && last.reason === c.reason, `${c.name}: recorded as ${c.reason}, got ${JSON.stringify(last)}`);
      }
      // A profile the engine cannot enforce is refused, never run under a weaker one.
      const strict = resign((p) => ({ ...p, profile: { ...p.profile, seccompTier: "strict" } }));
      await assert.rejects(t.engine.createSandbox(requestFromPlan(strict)), UnsupportedCapabilityError);
      const last = (await auditEntries(t.stateDir)).at(-1)!.event;
      assert.ok(last.type === "plan.denied" && last.reason === "capability_unsupported");
      await noNewSandbox(t.stateDir, dirs, "a refused plan boots nothing");
      assert.equal((await t.engine.listSandboxes()).length, 0);
    });

    test("a request that does not describe the plan's workload is refused, naming the field", async () => {
      const signed = await t.engine.planSandbox(request({ env: { MODE: "review" } }));
      await assert.rejects(
        t.engine.createSandbox(requestFromPlan(signed, { env: { MODE: "changed" } })),
        (err: unknown) => err instanceof AdmissionError && /"envSha256" differs/.test(err.message),
      );
      await assert.rejects(
        t.engine.createSandbox({ ...requestFromPlan(signed, { env: { MODE: "review" } }), ttlSeconds: 5 }),
        (err: unknown) => err instanceof AdmissionError && /"ttlSeconds" differs/.test(err.message),
      );
      const last = (await auditEntries(t.stateDir)).at(-1)!.event;
      assert.ok(last.type === "plan.denied" && last.reason === "request_mismatch");
      // The plan itself is intact: with the right request it is admitted.
      const sb = await t.engine.createSandbox(requestFromPlan(signed, { env: { MODE: "review" } }));
      await t.engine.killSandbox(sb.id);
    });

    if (!options.full) return;

    test("the operator policy file is enforced at admission with a PolicyDeniedError naming the rule, and its changes are recorded", async () => {
      const policyFile = join(t.stateDir, "policy.json");
      await writeFile(policyFile, JSON.stringify({ version: 1, maxTtlSeconds: 60, forbidEgress: true }), { mode: 0o644 });
      await assert.rejects(t.engine.createSandbox(request({ ttlSeconds: 600 })), (err: unknown) => {
        assert.ok(err instanceof PolicyDeniedError);
        assert.equal((err as PolicyDeniedError & { rule?: string }).rule, "maxTtlSeconds");
        assert.match(err.message, /maxTtlSeconds/);
        return true;
      });
      await assert.rejects(
        t.engine.createSandbox(request({ ttlSeconds: 30, network: { version: 1, default: "deny", rules: [{ kind: "https", host: "example.com" }] } })),
        (err: unknown) => err instanceof PolicyDeniedError && /forbidEgress/.test(err.message),
      );
      const sb = await t.engine.createSandbox(request({ ttlSeconds: 30 }));
      await t.engine.killSandbox(sb.id);
      const entries = await auditEntries(t.stateDir);
      const changed = entries.filter((e) => e.event.type === "policy.changed" && e.event.policyId === "operator");
      assert.equal(changed.length, 2, "the empty policy at open, then the file");
      assert.ok(entries.some((e) => e.event.type === "plan.denied" && e.event.reason === "policy_violation"));

      await chmod(policyFile, 0o666);
      await assert.rejects(t.engine.createSandbox(request({ ttlSeconds: 30 })), (err: unknown) => err instanceof AdmissionError && /writable by group or others/.test(err.message));
      await writeFile(policyFile, "{not json", { mode: 0o644 });
      await chmod(policyFile, 0o644);
      await assert.rejects(t.engine.createSandbox(request({ ttlSeconds: 30 })), (err: unknown) => err instanceof AdmissionError && /not valid JSON/.test(err.message));
      await writeFile(policyFile, JSON.stringify({ version: 1 }));
      const again = await t.engine.createSandbox(request({ ttlSeconds: 30 }));
      await t.engine.killSandbox(again.id);
    });

    test("a TTL expiry is recorded as sandbox.expired with its network summary", async () => {
      const sb = await t.engine.createSandbox(request({ ttlSeconds: 1 }));
      const deadline = Date.now() + 30_000;
      while ((await t.engine.getSandbox(sb.id)).state !== "stopped" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      // The stopped sandbox's receipt names its last lifecycle entry once it is recorded.
      let info = await t.engine.getSandbox(sb.id);
      while (info.receipt?.auditEntryId === sb.receipt?.auditEntryId && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        info = await t.engine.getSandbox(sb.id);
      }
      const entries = await auditEntries(t.stateDir);
      assert.deepEqual(entryOf(entries, info.receipt?.auditEntryId).event, { type: "sandbox.expired", sandboxId: sb.id, ttlSeconds: 1 });
      assert.deepEqual(eventsFor(entries, sb.id), ["sandbox.created", "network.summary", "sandbox.expired"]);
    });

    test("network decisions are summarized while the sandbox runs, in windows that add up to every decision", async () => {
      const own = await testEngine({ networkSummaryIntervalMs: 200 });
      try {
        const sb = await own.engine.createSandbox(request({ ttlSeconds: 120 }));
        // Denied by the default deny-all policy: the gateway answers 403 and records the decision.
        const fetch = (host: string) =>
          run(own.engine, sb.id, ["python3", "-c", `import urllib.request\ntry:\n  urllib.request.urlopen("http://${host}/", timeout=20)\nexcept Exception as e:\n  print(e)`]);
        assert.match((await fetch("denied-one.example")).stdout, /403/);
        const summaries = async () => (await auditEntries(own.stateDir)).filter((e) => e.event.type === "network.summary" && e.event.sandboxId === sb.id).length;
        assert.ok(await waitFor(async () => (await summaries()) > 0, 30_000));
        assert.equal(await summaries(), 1, "a summary is written while the sandbox runs");
        assert.equal((await own.engine.getSandbox(sb.id)).state, "running");
        assert.equal((await fetch("denied-two.example")).exit.exitCode, 0);
        await own.engine.killSandbox(sb.id);

        const entries = await auditEntries(own.stateDir);
        const windows = entries.flatMap((e) => (e.event.type === "network.summary" && e.event.sandboxId === sb.id ? [e.event] : []));
        assert.ok(windows.length >= 2, "the last window is written when the sandbox ends");
        const denied = windows.reduce((n, w) => n + w.deniedConnections, 0);
        const decisions = (await own.engine.networkEvents(sb.id, { limit: 1000 })).events.filter((e) => e.event.type === "connection");
        assert.equal(denied, decisions.length);
        assert.equal(denied, 2);
        assert.deepEqual(windows.flatMap((w) => w.deniedHosts).sort(), ["denied-one.example", "denied-two.example"]);
        for (let i = 1; i < windows.length; i++) assert.equal(windows[i]!.fromTs, windows[i - 1]!.toTs, "windows follow each other without a gap");
        assert.deepEqual(eventsFor(entries, sb.id).at(-1), "sandbox.killed");
      } finally {
        await own.close();
      }
    });

    test("an audit log with a torn tail stops admissions (nothing boots) until the operator repairs it", async () => {
      const path = auditFilePath(t.stateDir);
      const good = await readFile(path);
      await writeFile(path, Buffer.concat([good, Buffer.from('{"event":{"type":"sandbox.kil')]));
      const dirs = await sandboxDirs(t.stateDir);
      await assert.rejects(t.engine.createSandbox(request()), /torn|audit/i);
      await noNewSandbox(t.stateDir, dirs, "nothing booted");
      assert.equal((await t.engine.listSandboxes()).length, 0);
      await writeFile(path, good); // what AuditLog.repairTornTail does, by hand
      const sb = await t.engine.createSandbox(request());
      await t.engine.killSandbox(sb.id);
      assert.ok((await auditEntries(t.stateDir)).some((e) => e.event.type === "sandbox.created" && e.event.sandboxId === sb.id));
    });
  });
}
