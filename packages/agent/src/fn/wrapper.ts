/**
 * The call wrapper (`fn-wrapper.cjs`), run by the agent as an ordinary command for each call, on
 * the agent's own Node runtime. It is the trusted half of a call: it holds the seal key, checks
 * what the host sent, starts the function in a child process it watches, checks what the child
 * reports, and leaves the one result file the host reads. docs/FUNCTIONS.md has the contract.
 *
 *   host ──stdin: header + code + payload──▶ wrapper ──stdin: task + code + payload──▶ child (function)
 *   host ◀──sealed result file── wrapper ◀──fd 3: report── child;  child stdout/stderr ─▶ caller
 *
 * The key arrives on stdin and stays in this process; the child never has it. This process was
 * started through the runtime's unreadable loader, so it is not dumpable: a process of the same
 * uid cannot read its memory or ptrace it. Whatever the function writes, wherever, it cannot
 * produce a file that carries a valid seal.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, constants, openSync, readFileSync, writeSync } from "node:fs";
import {
  DEFAULT_FN_LIMITS,
  FnCodecError,
  MAX_FN_HEADER_BYTES,
  asCallPayload,
  decodeFnValue,
  encodeFnResultFile,
  fnLimitsFromEnv,
  minFnLimits,
  parseFnRequestHeader,
  parseJsonStrict,
  type FnErrorKind,
  type FnLimits,
  type FnRequestHeader,
  type FnResultHeader,
} from "@mvm/protocol";
import { CHILD_RESULT_FD } from "./child.js";
import { enterOnce } from "./guard.js";
import { boundStack, sanitizeMessage } from "./sanitize.js";

/** Bytes a child report may add to the result itself (its header line). */
const REPORT_SLACK_BYTES = 64 * 1024;

/** Kinds a child may report; anything else it claims is treated as a crash. */
const CHILD_KINDS = new Set<FnErrorKind>(["raised", "bad-input", "input-too-large", "bad-output", "output-too-large", "not-found", "reentry", "bad-request"]);

interface Outcome {
  header: FnResultHeader;
  result?: Uint8Array;
}

/** Exit codes of the wrapper itself. */
export const WRAPPER_EXIT = { ok: 0, noResult: 70, usage: 64 } as const;

function errorOutcome(id: string, kind: FnErrorKind, message: string, stack?: string): Outcome {
  const errorId = `fe_${randomBytes(12).toString("hex")}`;
  return {
    header: {
      v: 1,
      status: "error",
      id,
      error: { kind, errorId, message: sanitizeMessage(message) },
      ...(stack !== undefined ? { stack: boundStack(stack) } : {}),
    },
  };
}

/** Creates the result file; it must not exist (O_EXCL, no symlink followed). */
function writeResult(req: FnRequestHeader, outcome: Outcome): void {
  const bytes = encodeFnResultFile(req.key, outcome.header, outcome.result);
  const fd = openSync(req.resultPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
  } finally {
    closeSync(fd);
  }
}

/** Whether this process leads its own process group (so killing the group spares no one else). */
function leadsGroup(): boolean {
  try {
    const stat = readFileSync("/proc/self/stat", "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[2]) === process.pid;
  } catch {
    return false;
  }
}

/** What stdin carried: the request, the function's code and the payload (or that the payload was too large). */
type Request = { req: FnRequestHeader; limits: FnLimits; code: Buffer } & ({ payload: Buffer } | { tooLarge: true });

/**
 * Reads stdin: the header line, the code (exactly codeBytes, checked against codeSha256), then the
 * payload, refusing each before buffering past its cap.
 */
async function readRequest(envLimits: FnLimits): Promise<Request> {
  const stdin = process.stdin;
  let head = Buffer.alloc(0);
  let req: FnRequestHeader | undefined;
  let limits: FnLimits | undefined;
  const code: Buffer[] = [];
  let codeLeft = 0;
  const body: Buffer[] = [];
  let bodyBytes = 0;
  for await (const chunk of stdin as AsyncIterable<Buffer>) {
    let rest = chunk;
    if (req === undefined) {
      const nl = rest.indexOf(0x0a);
      if (nl < 0) {
        if (head.length + rest.length > MAX_FN_HEADER_BYTES) throw new Error(`request header past ${MAX_FN_HEADER_BYTES} bytes`);
        head = Buffer.concat([head, rest]);
        continue;
      }
      if (head.length + nl > MAX_FN_HEADER_BYTES) throw new Error(`request header past ${MAX_FN_HEADER_BYTES} bytes`);
      req = parseFnRequestHeader(Buffer.concat([head, rest.subarray(0, nl)]).toString("utf8"));
      limits = minFnLimits(req.limits, envLimits);
      codeLeft = req.codeBytes;
      rest = rest.subarray(nl + 1);
    }
    if (codeLeft > 0) {
      const take = rest.subarray(0, codeLeft);
      code.push(take);
      codeLeft -= take.length;
      rest = rest.subarray(take.length);
    }
    bodyBytes += rest.length;
    if (bodyBytes > limits!.maxInputBytes) {
      stdin.destroy();
      return { req, limits: limits!, code: Buffer.concat(code), tooLarge: true };
    }
    if (rest.length > 0) body.push(rest);
  }
  if (req === undefined) throw new Error("no request header");
  if (codeLeft > 0) throw new Error("the code ended early");
  const all = Buffer.concat(code);
  if (createHash("sha256").update(all).digest("hex") !== req.codeSha256) throw new Error("the code does not match its sha256");
  return { req, limits: limits!, code: all, payload: Buffer.concat(body, bodyBytes) };
}

/**
 * How to start another Node process like this one: `--via LOADER LIBDIR NODE` names the runtime's
 * loader, libraries and Node binary (started through the loader, process.execPath is the loader).
 */
function launcher(argv: readonly string[]): string[] {
  const i = argv.indexOf("--via");
  if (i >= 0 && argv[i + 1] && argv[i + 2] && argv[i + 3]) return [argv[i + 1]!, "--library-path", argv[i + 2]!, argv[i + 3]!];
  return [process.execPath];
}

/** The function's process, spawned before the request is read; what happened to it so far. */
interface Spawned {
  readonly child: ChildProcess;
  error?: Error;
  exited?: { code: number | null; signal: NodeJS.Signals | null };
}

/**
 * Spawns the function's process at once, so that its Node loads while the wrapper waits for (and
 * checks) the request. It runs only the trusted child entry until the task arrives on its stdin;
 * it never sees the request header (the key). A wrapper that serves no call kills it.
 */
function spawnChild(selfPath: string, argv: readonly string[]): Spawned {
  const [cmd, ...pre] = launcher(argv);
  const child = spawn(cmd!, [...pre, selfPath, "--child"], {
    stdio: ["pipe", "inherit", "inherit", "pipe"],
    env: process.env,
  });
  const spawned: Spawned = { child };
  child.on("error", (err) => (spawned.error ??= err));
  child.on("exit", (code, signal) => (spawned.exited ??= { code, signal }));
  child.stdin!.on("error", () => {}); // a child that exits early closes its stdin; its report says why
  return spawned;
}

/** Runs the call in the (pre-spawned) child and turns what happens into an outcome. */
function runCall(req: FnRequestHeader, limits: FnLimits, code: Buffer, payload: Buffer, spawned: Spawned): Promise<Outcome> {
  const { child } = spawned;
  const task = {
    format: req.format,
    id: req.id,
    codeBytes: code.length,
    exportName: req.exportName,
    maxDepth: limits.maxDepth,
    maxInputBytes: limits.maxInputBytes,
    maxOutputBytes: limits.maxOutputBytes,
  };
  child.stdin!.end(Buffer.concat([Buffer.from(`${JSON.stringify(task)}\n`), code, payload]));
  const cap = limits.maxOutputBytes + REPORT_SLACK_BYTES;
  const channel = child.stdio[CHILD_RESULT_FD] as NodeJS.ReadableStream;
  return new Promise<Outcome>((resolve) => {
    const chunks: Buffer[] = [];
    let got = 0;
    let settled = false;
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let ended = false;
    const finish = (o: Outcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(o);
    };
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      finish(errorOutcome(req.id, "timeout", `The function ran past its ${Math.round(limits.invokeTimeoutMs / 1000)} s invoke timeout and was killed`));
    }, limits.invokeTimeoutMs);
    channel.on("data", (c: Buffer) => {
      got += c.length;
      if (got > cap) {
        child.kill("SIGKILL");
        finish(errorOutcome(req.id, "output-too-large", `The function's result is past the ${limits.maxOutputBytes}-byte limit`));
        return;
      }
      chunks.push(c);
    });
    const decide = (): void => {
      if (!ended || exited === undefined) return;
      finish(interpret(req, limits, Buffer.concat(chunks, got), exited));
    };
    channel.on("end", () => {
      ended = true;
      decide();
    });
    channel.on("error", () => {
      ended = true;
      decide();
    });
    const failed = (err: Error): void => finish(errorOutcome(req.id, "crashed", `The function's process could not start: ${err.message}`));
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      exited = { code, signal };
      // Output the function left in its descendants does not hold the call open.
      setTimeout(() => {
        ended = true;
        decide();
      }, 200).unref();
      decide();
    };
    // It may have failed or ended already, while the request was read.
    if (spawned.error !== undefined) failed(spawned.error);
    else child.on("error", failed);
    if (spawned.exited !== undefined) onExit(spawned.exited.code, spawned.exited.signal);
    else child.on("exit", onExit);
  });
}

/** The outcome a child's report (bounded already) stands for. */
function interpret(req: FnRequestHeader, limits: FnLimits, report: Buffer, exited: { code: number | null; signal: string | null }): Outcome {
  const how = exited.signal !== null ? `signal ${exited.signal}` : `exit code ${String(exited.code)}`;
  const nl = report.indexOf(0x0a);
  if (nl < 0) return errorOutcome(req.id, "crashed", `The function's process ended without a result (${how})`);
  let line: unknown;
  try {
    line = parseJsonStrict(report.subarray(0, nl).toString("utf8"), { maxDepth: 2 });
  } catch {
    return errorOutcome(req.id, "crashed", "The function's process sent a malformed report");
  }
  const rest = report.subarray(nl + 1);
  const r = line as Record<string, unknown>;
  if (r.ok === true && r.bytes === rest.length) {
    try {
      decodeFnValue(rest, req.format, { maxBytes: limits.maxOutputBytes, maxDepth: limits.maxDepth });
    } catch (err) {
      const kind = err instanceof FnCodecError && err.fault === "too-large" ? "output-too-large" : "bad-output";
      return errorOutcome(req.id, kind, err instanceof Error ? err.message : "bad result");
    }
    return { header: { v: 1, status: "ok", id: req.id, format: req.format, resultBytes: rest.length }, result: rest };
  }
  if (r.ok === false && typeof r.kind === "string" && CHILD_KINDS.has(r.kind as FnErrorKind) && typeof r.message === "string") {
    return errorOutcome(req.id, r.kind as FnErrorKind, r.message, typeof r.stack === "string" ? r.stack : undefined);
  }
  return errorOutcome(req.id, "crashed", `The function's process sent an unexpected report (${how})`);
}

/**
 * The wrapper's entry. Resolves with the process exit code; the result file is written before
 * it resolves, except when the request itself could not be read (then there is no key to seal with).
 */
export async function runWrapper(selfPath: string, argv: readonly string[]): Promise<number> {
  let envLimits: FnLimits;
  try {
    enterOnce();
    envLimits = fnLimitsFromEnv(process.env);
  } catch (err) {
    process.stderr.write(`mvm-fn-wrapper: ${err instanceof Error ? err.message : String(err)}\n`);
    return WRAPPER_EXIT.usage;
  }
  const spawned = spawnChild(selfPath, argv);
  let read: Awaited<ReturnType<typeof readRequest>>;
  try {
    read = await readRequest(envLimits ?? DEFAULT_FN_LIMITS);
  } catch (err) {
    spawned.child.kill("SIGKILL");
    process.stderr.write(`mvm-fn-wrapper: bad request: ${sanitizeMessage(err instanceof Error ? err.message : String(err))}\n`);
    return WRAPPER_EXIT.usage;
  }
  const { req, limits } = read;
  let outcome: Outcome;
  if ("tooLarge" in read) {
    spawned.child.kill("SIGKILL");
    outcome = errorOutcome(req.id, "input-too-large", `The payload is past the ${limits.maxInputBytes}-byte input limit`);
  } else {
    try {
      asCallPayload(decodeFnValue(read.payload, req.format, { maxBytes: limits.maxInputBytes, maxDepth: limits.maxDepth }));
      outcome = await runCall(req, limits, read.code, read.payload, spawned);
    } catch (err) {
      spawned.child.kill("SIGKILL");
      const kind = err instanceof FnCodecError && err.fault === "too-large" ? "input-too-large" : "bad-input";
      outcome = errorOutcome(req.id, kind, err instanceof Error ? err.message : String(err));
    }
  }
  try {
    writeResult(req, outcome);
  } catch (err) {
    process.stderr.write(`mvm-fn-wrapper: cannot write the result: ${sanitizeMessage(err instanceof Error ? err.message : String(err))}\n`);
    return WRAPPER_EXIT.noResult;
  }
  if (outcome.header.status === "error" && outcome.header.error.kind === "timeout") {
    // Nothing the call started may run on: the whole group goes, this process last.
    if (leadsGroup()) process.kill(-process.pid, "SIGKILL");
  }
  return WRAPPER_EXIT.ok;
}
