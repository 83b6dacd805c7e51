/**
 * `mvmctl plan FILE.py`: the Python package's static analysis (`mvm.static.analyze_main`, which
 * reads the script with `ast` and never imports it) finds the declarations; mvmctl plans and
 * signs them with its own engine, so a Python script's bundle has the same shape as a
 * TypeScript one's.
 *
 * The interpreter is `--python`, else `$MVM_PYTHON`, else Debian's `/usr/bin/python3`, else
 * `python3` on PATH. Its answer is read as untrusted input: stdout is size-bounded, parsed with
 * the strict decoder and checked by a strict schema; the process has a deadline.
 */
import { execFile, type ExecFileException } from "node:child_process";
import { existsSync } from "node:fs";
import { z } from "zod";
import {
  AbortedError,
  CreateSandboxRequest,
  InvalidArgumentError,
  NotFoundError,
  TimeoutError,
  TransportError,
  UnsupportedCapabilityError,
  parseJsonStrict,
} from "@mvm/protocol";

/** Largest answer read from the Python analyzer, in bytes. */
export const MAX_PYTHON_ANALYSIS_BYTES = 16 * 1024 * 1024;
/** How long the analyzer may run, in milliseconds: it only parses one file. */
export const PYTHON_ANALYSIS_TIMEOUT_MS = 120_000;
/** Exit codes of {@link PROBE} when the interpreter lacks the package or its entry point. */
const NO_PACKAGE = 65;
const NO_ENTRY_POINT = 66;

/**
 * Run with `python -P -c`: `-P` keeps the script's directory (and the working directory) off
 * `sys.path`, so a file named `mvm.py` next to the script is not what gets imported.
 */
const PROBE = [
  "import sys",
  "try:",
  "    import mvm",
  "except ImportError:",
  `    sys.exit(${NO_PACKAGE})`,
  "try:",
  "    from mvm.static import analyze_main",
  "except ImportError:",
  `    sys.exit(${NO_ENTRY_POINT})`,
  "sys.exit(analyze_main(sys.argv[1:]))",
].join("\n");

const Location = z.strictObject({ line: z.number().int().min(1), column: z.number().int().min(1) });
const Diagnostic = z.strictObject({ line: z.number().int(), column: z.number().int(), message: z.string().max(4096) });

/** What `python3 -m mvm analyze FILE` prints. */
export const PythonAnalysis = z.union([
  z.strictObject({
    workloads: z
      .array(
        z.strictObject({
          location: Location,
          complete: z.boolean(),
          commands: z.array(z.array(z.string().max(128 * 1024)).max(4096)).max(4096),
          request: CreateSandboxRequest.optional(),
        }),
      )
      .max(1024),
    diagnostics: z.array(Diagnostic).max(10_000),
  }),
  z.strictObject({ error: z.strictObject({ code: z.enum(["NOT_FOUND", "INVALID_ARGUMENT"]), message: z.string().max(4096) }) }),
]);

export interface PythonWorkload {
  location: { line: number; column: number };
  complete: boolean;
  commands: string[][];
  request?: CreateSandboxRequest;
}

/** The interpreter `mvmctl plan FILE.py` runs: the flag, else `$MVM_PYTHON`, else Debian's, else PATH's. */
export function pythonInterpreter(flag: string | undefined, env: Readonly<Record<string, string | undefined>>): string {
  if (flag !== undefined && flag !== "") return flag;
  const fromEnv = env["MVM_PYTHON"];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  return existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
}

/**
 * The declarations of a Python script, found by the mvm package of `python` (the script is read
 * with `ast`, never imported).
 * @throws UnsupportedCapabilityError when `python` cannot be run or has no mvm package (or one
 *   too old to have the analyzer); NotFoundError / InvalidArgumentError for a missing or
 *   unreadable script; TransportError when the analyzer's answer is malformed or too large;
 *   TimeoutError after {@link PYTHON_ANALYSIS_TIMEOUT_MS}
 */
export async function analyzePython(
  file: string,
  options: { python: string; env: Readonly<Record<string, string | undefined>>; signal: AbortSignal },
): Promise<{ workloads: PythonWorkload[]; diagnostics: z.infer<typeof Diagnostic>[] }> {
  const { python, signal } = options;
  const hint = 'Install the mvm package (`/usr/bin/python3 -m pip install ./python`, see docs/PYTHON.md) or name an interpreter that has it with --python or MVM_PYTHON';
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(options.env)) if (v !== undefined) env[k] = v;
  // execFile caps each stream at maxBuffer (then kills the child) and enforces the timeout.
  const ran = await new Promise<{ error: ExecFileException | null; stdout: Buffer; stderr: Buffer }>((done) => {
    execFile(
      python,
      ["-P", "-c", PROBE, file],
      { env, encoding: "buffer", maxBuffer: MAX_PYTHON_ANALYSIS_BYTES, timeout: PYTHON_ANALYSIS_TIMEOUT_MS, killSignal: "SIGKILL", signal },
      (error, stdout, stderr) => done({ error, stdout, stderr }),
    );
  });
  const { error } = ran;
  const errTail = ran.stderr.subarray(-2048).toString("utf8");
  if (signal.aborted) throw new AbortedError(`Planning "${file}" was interrupted`);
  if (error?.code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER") throw new TransportError(`The Python analyzer's answer for "${file}" is larger than ${MAX_PYTHON_ANALYSIS_BYTES} bytes`);
  if (error?.killed === true && error.code === null) throw new TimeoutError(`The Python analyzer took longer than ${PYTHON_ANALYSIS_TIMEOUT_MS / 1000} s on "${file}"`);
  if (error && typeof error.code === "string") {
    throw new UnsupportedCapabilityError(`Cannot plan "${file}": cannot run Python "${python}": ${error.message}`, { cause: error, hint });
  }
  const code = error ? (typeof error.code === "number" ? error.code : null) : 0;
  if (code === NO_PACKAGE) throw new UnsupportedCapabilityError(`Cannot plan "${file}": Python "${python}" has no mvm package`, { hint });
  if (code === NO_ENTRY_POINT) {
    throw new UnsupportedCapabilityError(`Cannot plan "${file}": the mvm package of Python "${python}" is older than this mvmctl (it has no mvm.static.analyze_main)`, { hint });
  }
  if (code !== 0 && code !== 2) {
    throw new TransportError(`The Python analyzer failed on "${file}" (exit ${code ?? "by a signal"}): ${errTail.trim().split("\n").slice(-1)[0] ?? ""}`);
  }
  if (ran.stdout.byteLength === 0) {
    const last = errTail.trim().split("\n").slice(-1)[0] ?? "";
    throw new UnsupportedCapabilityError(`Cannot plan "${file}": Python "${python}" gave no analysis (exit ${code ?? "by a signal"})${last ? `: ${last}` : ""}`, { hint });
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(ran.stdout);
  } catch (cause) {
    throw new TransportError(`The Python analyzer's answer for "${file}" is not UTF-8`, { cause });
  }
  const parsed = PythonAnalysis.safeParse(parseJsonStrict(text));
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new TransportError(`The Python analyzer's answer for "${file}" does not match its schema: ${issue ? `${issue.path.join(".")}: ${issue.message}` : "unknown"}`);
  }
  const answer = parsed.data;
  if ("error" in answer) {
    if (answer.error.code === "NOT_FOUND") throw new NotFoundError(answer.error.message);
    throw new InvalidArgumentError(answer.error.message);
  }
  if (answer.workloads.some((w) => w.complete !== (w.request !== undefined))) {
    throw new TransportError(`The Python analyzer's answer for "${file}" has a workload whose request does not match its completeness`);
  }
  return answer as { workloads: PythonWorkload[]; diagnostics: z.infer<typeof Diagnostic>[] };
}
