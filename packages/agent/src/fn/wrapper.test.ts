/**
 * The call wrapper's rules, on the guest side: the bundled fn-wrapper.cjs run by this Node.js as
 * a process-group leader (as the agent runs it), fed a request on stdin, its result file read
 * with the host's decoder.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  DEFAULT_FN_LIMITS,
  decodeFnResultFile,
  decodeFnValue,
  encodeFnValue,
  type FnFormat,
  type FnLimits,
  type FnResultHeader,
} from "@mvm/protocol";
import { enterOnce, ReentryError } from "./guard.js";
import { sanitizeMessage } from "./sanitize.js";

const WRAPPER = fileURLToPath(new URL("../fn-wrapper.cjs", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "mvm-fn-wrapper-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Call {
  source: string;
  args?: unknown[];
  format?: FnFormat;
  limits?: Partial<FnLimits>;
  /** Raw payload bytes instead of encoding args. */
  payload?: Uint8Array;
  /** A stream of payload bytes, written until the wrapper stops reading. */
  endless?: boolean;
  id?: string;
  env?: Record<string, string>;
  /** Send code that does not match the header's sha256. */
  tamperCode?: boolean;
}

interface Outcome {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  header?: FnResultHeader;
  value?: unknown;
  bytesWritten: number;
}

let n = 0;
async function call(c: Call): Promise<Outcome> {
  const i = n++;
  const source = Buffer.from(c.source);
  const key = randomBytes(32).toString("hex");
  const resultPath = join(dir, `r-${i}.result`);
  const limits = { ...DEFAULT_FN_LIMITS, ...c.limits };
  const format = c.format ?? "json";
  const codeSha256 = createHash("sha256").update(source).digest("hex");
  const header = { v: 1, id: c.id ?? "t", format, mode: "production", key, resultPath, codeBytes: source.length, codeSha256, exportName: "default", limits };
  const child = spawn(process.execPath, [WRAPPER], { stdio: ["pipe", "pipe", "pipe"], detached: true, env: { PATH: process.env["PATH"] ?? "", ...c.env } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdin.on("error", () => {});
  let bytesWritten = 0;
  child.stdin.write(`${JSON.stringify(header)}\n`);
  child.stdin.write(c.tamperCode ? Buffer.from(c.source.replace("1", "2")) : source);
  if (c.endless) {
    const chunk = Buffer.alloc(1024 * 1024, 0x20);
    const pump = (): void => {
      while (!child.stdin.destroyed && child.exitCode === null) {
        bytesWritten += chunk.length;
        if (!child.stdin.write(chunk)) {
          child.stdin.once("drain", pump);
          return;
        }
      }
    };
    pump();
  } else {
    child.stdin.end(c.payload ?? encodeFnValue([c.args ?? [], {}], format, { maxBytes: 1 << 30, maxDepth: 1000 }));
  }
  const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on("close", (co, si) => resolve([co, si])));
  const out: Outcome = { code, signal, stdout, stderr, bytesWritten };
  if (existsSync(resultPath)) {
    const { header: h, result } = decodeFnResultFile(key, readFileSync(resultPath), c.id ?? "t");
    out.header = h;
    if (h.status === "ok") out.value = decodeFnValue(result, format, { maxBytes: limits.maxOutputBytes, maxDepth: limits.maxDepth });
  }
  return out;
}

const kind = (o: Outcome): string | undefined => (o.header?.status === "error" ? o.header.error.kind : undefined);

describe("function call wrapper (guest side)", () => {
  it("calls the function and seals its result; its output streams separately", async () => {
    const o = await call({ source: 'module.exports = async (a, b) => { console.log("out"); console.error("err"); return a + b; };', args: [2, 3] });
    assert.equal(o.value, 5);
    assert.equal(o.stdout, "out\n");
    assert.equal(o.stderr, "err\n");
    assert.equal(o.code, 0);
  });

  it("round-trips msgpack, bytes included", async () => {
    const o = await call({ source: "module.exports = (b) => ({ len: b.length, back: b });", args: [new Uint8Array([1, 2, 3])], format: "msgpack" });
    assert.deepEqual(o.value, { len: 3, back: new Uint8Array([1, 2, 3]) });
  });

  it("ignores a result spoofed on stdout and stderr", async () => {
    const fake = `mvm-fn-result v1\\n${"0".repeat(64)}\\n{"v":1,"status":"ok","id":"t","format":"json","resultBytes":2}\\n42`;
    const o = await call({ source: `module.exports = () => { process.stdout.write(${JSON.stringify(fake)}); process.stderr.write(${JSON.stringify(fake)}); return 1; };` });
    assert.match(o.stdout, /mvm-fn-result v1/);
    assert.equal(o.value, 1);
  });

  it("refuses input past the cap without buffering it", async () => {
    // An endless payload: a wrapper that buffered it would never answer.
    const o = await call({ source: "module.exports = () => 1;", endless: true, limits: { maxInputBytes: 4 * 1024 * 1024 } });
    assert.equal(kind(o), "input-too-large");
    assert.ok(o.bytesWritten < 64 * 1024 * 1024, `${o.bytesWritten} bytes written before it stopped`);
  });

  it("refuses a result past the output cap", async () => {
    const o = await call({ source: 'module.exports = () => "x".repeat(5000);', limits: { maxOutputBytes: 1000 } });
    assert.equal(kind(o), "output-too-large");
  });

  it("stops a child that floods its report channel, without buffering it", async () => {
    const source = 'module.exports = () => { const b = Buffer.alloc(1 << 20); for (;;) require("fs").writeSync(3, b); };';
    const o = await call({ source, limits: { maxOutputBytes: 1024 * 1024 } });
    assert.equal(kind(o), "output-too-large");
  });

  it("refuses depth 65, duplicate keys and non-finite numbers in the payload", async () => {
    let deep = "1";
    for (let i = 0; i < 62; i++) deep = `[${deep}]`;
    const ok = await call({ source: "module.exports = (x) => 'fine';", payload: Buffer.from(`[[${deep}],{}]`) });
    assert.equal(ok.value, "fine"); // depth 64 in all
    const o65 = await call({ source: "module.exports = () => 1;", payload: Buffer.from(`[[[${deep}]],{}]`) });
    assert.equal(kind(o65), "bad-input");
    const dup = await call({ source: "module.exports = () => 1;", payload: Buffer.from('[[{"a":1,"a":2}],{}]') });
    assert.equal(kind(dup), "bad-input");
    const inf = await call({ source: "module.exports = () => 1;", payload: Buffer.from("[[1e999],{}]") });
    assert.equal(kind(inf), "bad-input");
  });

  it("refuses to return NaN or a non-plain value", async () => {
    assert.equal(kind(await call({ source: "module.exports = () => NaN;" })), "bad-output");
    assert.equal(kind(await call({ source: "module.exports = () => new Map();" })), "bad-output");
  });

  it("kills the whole process group at the invoke timeout", async () => {
    const marker = `mvm-fn-test-${randomBytes(6).toString("hex")}`;
    const source = `module.exports = () => { require("child_process").spawn("sleep", ["600"], { argv0: "${marker}", stdio: "ignore" }); return new Promise(() => {}); };`;
    const o = await call({ source, limits: { invokeTimeoutMs: 1000 } });
    assert.equal(kind(o), "timeout");
    assert.equal(o.signal, "SIGKILL"); // the wrapper killed its group, itself last
    const left = readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, "latin1").startsWith(marker);
      } catch {
        return false;
      }
    });
    assert.deepEqual(left, []);
  });

  it("sanitizes errors: paths stripped, 200 characters, stack kept for the operator", async () => {
    const o = await call({ source: 'module.exports = () => { throw new Error("cannot open /home/alice/.ssh/id_rsa: " + "x".repeat(500)); };' });
    assert.equal(o.header?.status, "error");
    if (o.header?.status !== "error") return;
    assert.equal(o.header.error.kind, "raised");
    assert.match(o.header.error.errorId, /^fe_[0-9a-f]{24}$/);
    assert.ok(!o.header.error.message.includes("/home/alice"), o.header.error.message);
    assert.ok(o.header.error.message.length <= 200);
    assert.match(o.header.stack ?? "", /id_rsa/);
  });

  it("reports a missing export and a crash", async () => {
    assert.equal(kind(await call({ source: "module.exports = { notAFunction: 1 };" })), "not-found");
    assert.equal(kind(await call({ source: "module.exports = () => process.exit(3);" })), "crashed");
  });

  it("refuses a request with a bad function id (no key accepted, no result written)", async () => {
    const o = await call({ source: "module.exports = () => 1;", id: "Not_An_Id" });
    assert.equal(o.header, undefined);
    assert.equal(o.code, 64);
    assert.match(o.stderr, /bad request/);
  });

  it("refuses code that does not match its sha256 (no result: the request is refused)", async () => {
    const o = await call({ source: "module.exports = () => 1;", tamperCode: true });
    assert.equal(o.header, undefined);
    assert.equal(o.code, 64);
    assert.match(o.stderr, /sha256/);
  });

  it("applies the stricter of the host's limits and its own MVM_FN_* knobs", async () => {
    const o = await call({ source: "module.exports = (s) => s;", args: ["x".repeat(100)], env: { MVM_FN_MAX_INPUT_BYTES: "50" } });
    assert.equal(kind(o), "input-too-large");
  });
});

describe("single-shot guard", () => {
  it("refuses a second entry unless MVM_FN_ALLOW_REENTRY=1", () => {
    enterOnce({});
    assert.throws(() => enterOnce({}), ReentryError);
    enterOnce({ MVM_FN_ALLOW_REENTRY: "1" });
  });
});

describe("error message sanitizer", () => {
  it("strips paths and control characters and caps the length", () => {
    assert.equal(sanitizeMessage("ENOENT: open '/etc/shadow'"), "ENOENT: open '<path>'");
    assert.equal(sanitizeMessage("at file:///srv/app/x.js:1:2"), "at <path>");
    assert.equal(sanitizeMessage("see ./src/lib/thing.ts and ~/notes/a"), "see <path> and <path>");
    assert.equal(sanitizeMessage("a\u0000b\nc"), "a b c");
    assert.equal(sanitizeMessage("y".repeat(300)).length, 200);
  });
});
