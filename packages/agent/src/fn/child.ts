/**
 * The function's own process (`fn-wrapper.cjs --child`). It reads its task on stdin from the
 * wrapper (a header line, the code, then the payload the wrapper already checked), decodes the payload
 * under the same rules, compiles the code, calls the export and reports on fd 3 to the wrapper:
 * `{"ok":true,"bytes":N}\n` and N encoded bytes, or `{"ok":false,...}\n`. Stdout and stderr are
 * the caller's, never read by anyone for a result. This process is as untrusted as the function:
 * the wrapper bounds and checks everything it reports.
 */
import { closeSync, readSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { compileFunction } from "node:vm";
import { asCallPayload, decodeFnValue, encodeFnValue, FnCodecError, parseJsonStrict, type FnFormat } from "@mvm/protocol";
import { enterOnce } from "./guard.js";

/** Where the child reports to its wrapper. */
export const CHILD_RESULT_FD = 3;

export interface ChildTask {
  readonly format: FnFormat;
  readonly id: string;
  readonly codeBytes: number;
  readonly exportName: string;
  readonly maxDepth: number;
  readonly maxInputBytes: number;
  readonly maxOutputBytes: number;
}

/** Compiles the function's code as a CommonJS module named `filename` and returns its exports. */
function loadModule(code: string, filename: string): unknown {
  const wrapper = compileFunction(code, ["exports", "require", "module", "__filename", "__dirname"], { filename });
  const module = { exports: {} as unknown };
  wrapper.call(module.exports, module.exports, createRequire(filename), module, filename, dirname(filename));
  return module.exports;
}

type Report = { ok: true; bytes: number } | { ok: false; kind: string; message: string; stack?: string };

function report(r: Report, bytes?: Uint8Array): void {
  const line = Buffer.from(`${JSON.stringify(r)}\n`);
  writeAll(line);
  if (bytes) writeAll(bytes);
  closeSync(CHILD_RESULT_FD);
}

function writeAll(b: Uint8Array): void {
  let off = 0;
  while (off < b.length) off += writeSync(CHILD_RESULT_FD, b, off, b.length - off);
}

function readStdin(max: number): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EAGAIN") continue;
      throw err;
    }
    if (n === 0) break;
    total += n;
    if (total > max) throw new FnCodecError("too-large", `Task past ${max} bytes`);
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks, total);
}

function errorReport(kind: string, err: unknown): Report {
  const e = err instanceof Error ? err : new Error(String(err));
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(err);
  return { ok: false, kind, message: message.slice(0, 4096), ...(typeof e.stack === "string" ? { stack: e.stack.slice(0, 16384) } : {}) };
}

/** Runs the child's single call. Never throws: every outcome is reported on fd 3. */
export async function runChild(): Promise<void> {
  try {
    enterOnce();
  } catch (err) {
    report(errorReport("reentry", err));
    return;
  }
  let task: ChildTask;
  let code: string;
  let payload: Buffer;
  try {
    const all = readStdin(16 * 1024 + 256 * 1024 * 1024);
    const nl = all.indexOf(0x0a);
    if (nl < 0 || nl > 16 * 1024) throw new Error("no task header");
    task = parseJsonStrict(all.subarray(0, nl).toString("utf8"), { maxDepth: 2 }) as ChildTask;
    code = all.subarray(nl + 1, nl + 1 + task.codeBytes).toString("utf8");
    payload = all.subarray(nl + 1 + task.codeBytes);
  } catch (err) {
    report(errorReport("bad-request", err));
    return;
  }
  let call: { args: unknown[]; kwargs: Record<string, unknown> };
  try {
    call = asCallPayload(decodeFnValue(payload, task.format, { maxBytes: task.maxInputBytes, maxDepth: task.maxDepth }));
  } catch (err) {
    report(errorReport(err instanceof FnCodecError && err.fault === "too-large" ? "input-too-large" : "bad-input", err));
    return;
  }
  let target: unknown;
  try {
    const mod = loadModule(code, `/work/${task.id}.cjs`) as Record<string, unknown> | ((...a: unknown[]) => unknown);
    target = task.exportName === "default" ? (typeof mod === "function" ? mod : mod.default) : (mod as Record<string, unknown>)[task.exportName];
  } catch (err) {
    report(errorReport("raised", err));
    return;
  }
  if (typeof target !== "function") {
    report({ ok: false, kind: "not-found", message: `Export "${task.exportName}" of the function bundle is not a function` });
    return;
  }
  let value: unknown;
  try {
    const args = Object.keys(call.kwargs).length > 0 ? [...call.args, call.kwargs] : call.args;
    value = await (target as (...a: unknown[]) => unknown)(...args);
  } catch (err) {
    report(errorReport("raised", err));
    return;
  }
  let bytes: Uint8Array;
  try {
    bytes = encodeFnValue(value, task.format, { maxBytes: task.maxOutputBytes, maxDepth: task.maxDepth });
  } catch (err) {
    report(errorReport(err instanceof FnCodecError && err.fault === "too-large" ? "output-too-large" : "bad-output", err));
    return;
  }
  report({ ok: true, bytes: bytes.length }, bytes);
}
