/**
 * Plan modes see fn(...) declarations: static mode reads the options literal, record mode records
 * the sandbox a call creates; both carry the function spec (id, wrapper format, limits) that the
 * plan's IR records.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { CreateSandboxRequest, DEFAULT_FN_LIMITS, UnsupportedCapabilityError } from "@mvm/protocol";
import { RecordingEngine } from "../recording.js";
import { analyzeSourceText } from "../static-analysis.js";
import { fn } from "./function.js";

const SOURCE = `
import { fn, NetworkPolicy } from "@mvm/sdk";
export const add = fn(
  { id: "add", image: "debian:bookworm+python3", timeoutSeconds: 30, format: "msgpack", limits: { maxDepth: 16 },
    network: NetworkPolicy.denyByDefault(), onStdout: (c) => console.log(c), errorMode: "development" },
  async (a: number, b: number) => a + b,
);
`;

describe("plan modes and fn()", () => {
  it("static mode plans a function's sandbox with its spec", async () => {
    const a = await analyzeSourceText(SOURCE, "fns.ts");
    assert.deepEqual(a.diagnostics, []);
    assert.equal(a.workloads.length, 1);
    const w = a.workloads[0]!;
    assert.ok(w.complete);
    assert.deepEqual(w.request.function, {
      id: "add",
      format: "msgpack",
      limits: { maxInputBytes: DEFAULT_FN_LIMITS.maxInputBytes, maxOutputBytes: DEFAULT_FN_LIMITS.maxOutputBytes, maxDepth: 16, invokeTimeoutMs: 30_000 },
    });
    assert.equal(w.request.image, "debian:bookworm+python3");
    assert.equal(w.request.labels?.["fn.id"], "add");
    assert.ok(CreateSandboxRequest.safeParse(w.request).success);
  });

  it("static mode reports an fn whose id is not a literal", async () => {
    const a = await analyzeSourceText('import { fn } from "@mvm/sdk";\nconst id = process.argv[2];\nfn({ id }, () => 1);\n', "x.ts");
    assert.equal(a.workloads[0]?.complete, false);
    assert.ok(a.diagnostics.length > 0);
  });

  it("record mode records the call's sandbox with the same spec as fn() computes, and says no result exists", async () => {
    const rec = new RecordingEngine();
    const add = fn({ id: "add", engine: rec, image: "debian:bookworm+python3", timeoutSeconds: 30, format: "msgpack", limits: { maxDepth: 16 }, onStdout: () => {} }, (a: number, b: number) => a + b);
    await assert.rejects(add.remote(1, 2), UnsupportedCapabilityError);
    const [w] = rec.recording().workloads;
    assert.ok(w);
    assert.deepEqual(w.request.function, add.spec());
    assert.ok(w.commands.some((c) => c.argv.includes("/.mvm/fn-wrapper.cjs")));
    const statically = (await analyzeSourceText(SOURCE, "fns.ts")).workloads[0]!.request;
    assert.deepEqual(statically.function, w.request.function);
    assert.equal(statically.ttlSeconds, w.request.ttlSeconds);
  });
});
