/**
 * The request limits of limits.ts: each collection's count and byte bound is enforced by its
 * schema with an issue naming the field and the limit, and whatever the exec schema accepts
 * (with a sandbox environment within its limit) encodes into one agent control frame.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { CreateSandboxRequest, DEFAULT_EXEC_CWD, ExecApiRequest, ImportImageApiRequest } from "./api.js";
import { FrameKind, MAX_CONTROL_PAYLOAD, encodeFrame } from "./frame.js";
import {
  EXEC_FRAME_RESERVE_BYTES,
  MAX_API_REQUEST_JSON_BYTES,
  MAX_ARGV_ITEMS,
  MAX_CIDR_PORTS,
  MAX_ENV_VARS,
  MAX_EXEC_COMMAND_BYTES,
  MAX_LABELS,
  MAX_LABELS_BYTES,
  MAX_POLICY_RULES,
  MAX_PUBLISHED_PORTS,
  MAX_SANDBOX_ENV_BYTES,
  MAX_SECRET_REF_HOSTS,
  MAX_SECRETS_PER_SPEC,
  jsonBytes,
  sandboxEnvProblem,
} from "./limits.js";
import { Env, ExecRequest, MAX_REQUEST_ID, MkdirRequest, RenameRequest, encodeControl, parseControl } from "./messages.js";
import { WorkloadCommand } from "./plan.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 200);

/** The first issue of a failed parse, as "path: message". */
function firstIssue(schema: { safeParse(v: unknown): { success: boolean; error?: { issues: { path: PropertyKey[]; message: string }[] } } }, value: unknown): string {
  const r = schema.safeParse(value);
  assert.equal(r.success, false, "expected the schema to refuse the value");
  const issue = r.error?.issues[0];
  return `${issue?.path.join(".") ?? ""}: ${issue?.message ?? ""}`;
}

/** The exec control message the engine sends for `request` in a sandbox whose env is `sandboxEnv`, with every fixed field at its widest. */
function execFrame(request: ExecApiRequest, sandboxEnv: Record<string, string>): Buffer {
  const message = {
    t: "req",
    id: MAX_REQUEST_ID,
    op: "exec",
    argv: request.argv,
    env: { ...sandboxEnv, ...(request.env ?? {}) },
    cwd: request.cwd ?? DEFAULT_EXEC_CWD,
    stdin: 0xffff_fffd,
    stdout: 0xffff_fffe,
    stderr: 0xffff_ffff,
    timeoutMs: 7 * 24 * 3600 * 1000,
    killGraceMs: 60_000,
    maxOutputBytes: Number.MAX_SAFE_INTEGER,
  };
  const payload = encodeControl(message);
  parseControl(ExecRequest, payload);
  return encodeFrame(FrameKind.Control, 0, payload);
}

/** A string of `n` copies of `unit`. */
const rep = (unit: string, n: number): string => unit.repeat(Math.max(0, n));

describe("request collection bounds", () => {
  it("labels: count and bytes", () => {
    const many = Object.fromEntries(Array.from({ length: MAX_LABELS + 1 }, (_, i) => [`k${i}`, "v"]));
    assert.equal(firstIssue(CreateSandboxRequest, { labels: many }), `labels: at most ${MAX_LABELS} labels`);
    const atMax = Object.fromEntries(Array.from({ length: MAX_LABELS }, (_, i) => [`k${i}`, "v"]));
    assert.equal(CreateSandboxRequest.safeParse({ labels: atMax }).success, true);
    // 64 labels of 256 control characters: within count and length, over the byte bound.
    const heavy = Object.fromEntries(Array.from({ length: MAX_LABELS }, (_, i) => [`k${i}`, rep("\u0001", 256)]));
    assert.ok(jsonBytes(heavy) > MAX_LABELS_BYTES);
    assert.equal(firstIssue(CreateSandboxRequest, { labels: heavy }), `labels: at most ${MAX_LABELS_BYTES} bytes as JSON`);
  });

  it("labels: a create with 1.5 million labels is refused on its count", () => {
    const labels: Record<string, string> = {};
    for (let i = 0; i < 1_500_000; i++) labels[`l${i}`] = "";
    assert.equal(firstIssue(CreateSandboxRequest, { labels }), `labels: at most ${MAX_LABELS} labels`);
  });

  it("create env: count and bytes", () => {
    const many = Object.fromEntries(Array.from({ length: MAX_ENV_VARS + 1 }, (_, i) => [`V${i}`, ""]));
    assert.match(firstIssue(CreateSandboxRequest, { env: many }), new RegExp(`^env: at most ${MAX_ENV_VARS} variables`));
    const big = { A: rep("x", MAX_SANDBOX_ENV_BYTES) };
    assert.match(firstIssue(CreateSandboxRequest, { env: big }), new RegExp(`^env: takes \\d+ bytes as JSON, more than the limit of ${MAX_SANDBOX_ENV_BYTES} bytes`));
    assert.equal(CreateSandboxRequest.safeParse({ env: { A: rep("x", MAX_SANDBOX_ENV_BYTES - 100) } }).success, true);
  });

  it("exec: an env value of 128 KiB is refused by the schema, naming the field and the limit", () => {
    const issue = firstIssue(ExecApiRequest, { argv: ["true"], env: { BIG: rep("x", 128 * 1024) } });
    assert.match(issue, new RegExp(`^argv: argv, env and cwd take \\d+ bytes as JSON, more than the limit of ${MAX_EXEC_COMMAND_BYTES} bytes$`));
  });

  it("exec: argv count and bytes", () => {
    assert.match(firstIssue(ExecApiRequest, { argv: Array.from({ length: MAX_ARGV_ITEMS + 1 }, () => "a") }), /^argv: /);
    assert.match(firstIssue(ExecApiRequest, { argv: ["echo", rep("a", MAX_EXEC_COMMAND_BYTES)] }), /more than the limit of 32768 bytes/);
  });

  it("create command and plan commands must fit an exec", () => {
    assert.match(firstIssue(CreateSandboxRequest, { command: ["echo", rep("a", MAX_EXEC_COMMAND_BYTES)] }), /^command: .*limit of 32768 bytes/);
    assert.match(firstIssue(WorkloadCommand, { kind: "entrypoint", args: [rep("a", MAX_EXEC_COMMAND_BYTES)] }), /^args: /);
    assert.match(firstIssue(WorkloadCommand, { kind: "argv", argv: [rep("a", MAX_EXEC_COMMAND_BYTES)] }), /^argv: /);
  });

  it("network rules, cidr ports, secrets, secret hosts and ports: counts", () => {
    const rules = Array.from({ length: MAX_POLICY_RULES + 1 }, () => ({ kind: "https", host: "example.com" }));
    assert.match(firstIssue(CreateSandboxRequest, { network: { version: 1, default: "deny", rules } }), /^network\.rules: /);
    const ports = Array.from({ length: MAX_CIDR_PORTS + 1 }, (_, i) => i + 1);
    assert.match(firstIssue(CreateSandboxRequest, { network: { version: 1, default: "deny", rules: [{ kind: "cidr", cidr: "10.0.0.0/8", ports }] } }), /^network\.rules\.0\.ports/);
    const ref = { kind: "secret-ref", source: "store", name: "k", posture: "mediated" };
    const secrets = Object.fromEntries(Array.from({ length: MAX_SECRETS_PER_SPEC + 1 }, (_, i) => [`S${i}`, ref]));
    assert.match(firstIssue(CreateSandboxRequest, { secrets }), new RegExp(`at most ${MAX_SECRETS_PER_SPEC} secrets`));
    const hosts = Array.from({ length: MAX_SECRET_REF_HOSTS + 1 }, () => "example.com");
    assert.match(firstIssue(CreateSandboxRequest, { secrets: { S: { ...ref, hosts } } }), /^secrets\.S\.hosts/);
    const published = Array.from({ length: MAX_PUBLISHED_PORTS + 1 }, (_, i) => ({ guest: i + 1 }));
    assert.match(firstIssue(CreateSandboxRequest, { ports: published }), /^ports: /);
  });

  it("import paths: length and NUL", () => {
    assert.match(firstIssue(ImportImageApiRequest, { path: `/${rep("a", 4096)}`, name: "x" }), /^path: /);
    assert.match(firstIssue(ImportImageApiRequest, { path: "/a\0b", name: "x" }), /^path: must not contain NUL/);
  });
});

describe("the request body limit holds the largest valid request", () => {
  it("a create with every collection at its count and byte bound, carrying a plan as large, fits MAX_API_REQUEST_JSON_BYTES", () => {
    // DNS names of 251 characters: four 61-character labels and "com".
    const hosts = Array.from({ length: MAX_SECRET_REF_HOSTS }, (_, i) => `${rep("h", 59)}${String(i).padStart(2, "0")}.${[1, 2, 3].map(() => rep("h", 61)).join(".")}.com`);
    const secretNames = Array.from({ length: MAX_SECRETS_PER_SPEC }, (_, i) => `S_${rep("X", 120)}${String(i).padStart(3, "0")}`);
    const ref = (i: number) => ({ kind: "secret-ref" as const, source: "file" as const, name: `/${rep("\u0001", 4094)}${String(i).padStart(1, "0")}`.slice(0, 4096), posture: "env" as const, hosts });
    const secrets = Object.fromEntries(secretNames.map((n, i) => [n, ref(i)]));
    const v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:0/112";
    const rules = Array.from({ length: MAX_POLICY_RULES }, () => ({ kind: "cidr" as const, cidr: v6.replace(/0\/112$/, "0/112"), ports: Array.from({ length: MAX_CIDR_PORTS }, (_, i) => 65535 - i) }));
    const network = { version: 1 as const, default: "deny" as const, rules };
    const command = ["run", rep("c", MAX_EXEC_COMMAND_BYTES - 64)];
    const envNames = Array.from({ length: MAX_ENV_VARS }, (_, i) => `E${String(i).padStart(4, "0")}${rep("N", 250)}`).sort();
    const labels = Object.fromEntries(Array.from({ length: MAX_LABELS }, (_, i) => [`k${String(i).padStart(2, "0")}${rep("k", 61)}`, rep("v", 180)]));
    const digest = `sha256:${"a".repeat(64)}`;
    const plan = {
      plan: {
        version: 1,
        ir: {
          version: 1,
          imageDigest: digest,
          command: { kind: "argv", argv: command },
          envNames,
          envSha256: digest,
          resources: {},
          network,
          secrets: secretNames.map((name, i) => ({ name, ref: ref(i) })),
          ttlSeconds: 600,
          ports: Array.from({ length: MAX_PUBLISHED_PORTS }, (_, i) => ({ guest: 60000 + i, host: 50000 + i })),
          requiredTier: "container",
          intent: "code:execute",
        },
        profile: {
          intent: "code:execute",
          seccompTier: "default",
          secretRelease: "env",
          auditLabels: Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`a${i}${rep("a", 60)}`, rep("\u0001", 256)])),
        },
        notBeforeMs: 0,
        notAfterMs: Number.MAX_SAFE_INTEGER,
        nonce: "0".repeat(32),
        planId: digest,
      },
      signature: { alg: "ed25519", keyId: digest, value: "0".repeat(128) },
    };
    const request = {
      image: rep("a", 512),
      env: { FILL: rep("e", MAX_SANDBOX_ENV_BYTES - 16) },
      labels,
      network,
      secrets,
      ports: plan.plan.ir.ports,
      command,
      intent: "code:execute",
      plan,
    };
    const r = CreateSandboxRequest.safeParse(request);
    assert.ok(r.success, JSON.stringify(r.error?.issues[0]));
    const bytes = jsonBytes(request);
    assert.ok(bytes > 4 * 1024 * 1024, `the worst case takes ${bytes} bytes`);
    assert.ok(bytes <= MAX_API_REQUEST_JSON_BYTES, `the worst case takes ${bytes} bytes`);
  });
});

describe("schema limits agree with the agent's control frame", () => {
  it("the budget adds up: exec command + sandbox env + the fixed fields fit the frame", () => {
    assert.ok(EXEC_FRAME_RESERVE_BYTES >= 1024);
    const fixed = execFrame({ argv: ["x"] }, {}).byteLength;
    assert.ok(fixed < EXEC_FRAME_RESERVE_BYTES, `fixed fields take ${fixed} bytes`);
  });

  it("the largest accepted exec, in the costliest characters, with the largest sandbox env, fits one frame", () => {
    for (const unit of ["a", "\u0001", "\ud800", "€", "😀"]) {
      // Grow one env value until the exec schema refuses it: the last accepted one is at the limit.
      const argv = ["sh", "-c", rep(unit, 100)];
      let lo = 0;
      let hi = MAX_EXEC_COMMAND_BYTES;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if (ExecApiRequest.safeParse({ argv, env: { V: rep(unit, mid) }, cwd: "/work" }).success) lo = mid;
        else hi = mid - 1;
      }
      const request = ExecApiRequest.parse({ argv, env: { V: rep(unit, lo) }, cwd: "/work" });
      assert.ok(MAX_EXEC_COMMAND_BYTES - jsonBytes({ argv: request.argv, env: request.env, cwd: request.cwd }) < 8);
      let envLen = Math.floor(MAX_SANDBOX_ENV_BYTES / 8);
      while (sandboxEnvProblem({ W: rep(unit, envLen + 1) }) === undefined) envLen++;
      const frame = execFrame(request, { W: rep(unit, envLen) });
      assert.ok(frame.byteLength <= MAX_CONTROL_PAYLOAD + 12);
    }
  });

  it("property: any exec the API schema accepts, in any sandbox env within its limit, encodes into one control frame", () => {
    const unit = fc.constantFrom("a", "é", "€", "😀", "\u0001", "\"", "\\", "\ud800", "\udfff");
    const heavy = fc.tuple(unit, fc.integer({ min: 0, max: 6_000 })).map(([u, n]) => rep(u, n));
    const name = fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,20}$/);
    const env = fc.dictionary(name, heavy, { maxKeys: 4 });
    const request = fc.record(
      {
        argv: fc.array(heavy, { minLength: 1, maxLength: 4 }).map((a) => ["cmd", ...a]),
        env,
        cwd: fc.constantFrom("/work", "/", `/${rep("\u0001", 3000)}`, `/${rep("€", 4000)}`),
      },
      { requiredKeys: ["argv"] },
    );
    fc.assert(
      fc.property(request, env, (req, sandboxEnv) => {
        const parsed = ExecApiRequest.safeParse(req);
        if (!parsed.success || sandboxEnvProblem(sandboxEnv) !== undefined || !Env.safeParse(sandboxEnv).success) return;
        const frame = execFrame(parsed.data, sandboxEnv);
        assert.ok(frame.byteLength - 12 <= MAX_CONTROL_PAYLOAD);
      }),
      { numRuns: RUNS },
    );
  });

  it("the widest path operations fit one control frame", () => {
    const path = `/${rep("\u0001", 4095)}`;
    for (const [schema, message] of [
      [MkdirRequest, { t: "req", id: MAX_REQUEST_ID, op: "mkdir", path, recursive: true }],
      [RenameRequest, { t: "req", id: MAX_REQUEST_ID, op: "rename", from: path, to: path }],
    ] as const) {
      const payload = encodeControl(message);
      parseControl(schema, payload);
      assert.ok(payload.byteLength <= MAX_CONTROL_PAYLOAD, `${message.op}: ${payload.byteLength} bytes`);
    }
  });
});
