/**
 * Small C programs the engine compiles itself with the system C compiler (the static guest
 * helper, the daemon's peer-credential helper), stored under `<outRoot>/<key>/<name>` where the
 * key is the sha256 of the source, the compiler's `--version` and the flags, so a change to any
 * of them builds anew. The build is written to a temp file, checked, and put in place with the
 * store's `publishFile` (fsync, rename); temp files of builders that died are removed first.
 */
import { execFile, type ExecFileException } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { AbortedError, InternalError, InvalidArgumentError, TimeoutError, UnsupportedCapabilityError } from "@mvm/protocol";
import { publishFile, removeDeadTemps } from "../store/atomic.js";

/** Compiler diagnostics kept in an error message, in characters. */
const MAX_DIAGNOSTICS_CHARS = 2000;

interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  readonly timeoutMs: number;
  readonly signal: AbortSignal | undefined;
}

class RunFailure extends Error {
  constructor(
    readonly error: ExecFileException,
    readonly stderr: string,
  ) {
    super(error.message, { cause: error });
  }
}

export function run(file: string, args: readonly string[], options: RunOptions): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { PATH: process.env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin", LC_ALL: "C" };
  if (process.env["TMPDIR"] !== undefined) env["TMPDIR"] = process.env["TMPDIR"];
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        env,
        encoding: "utf8",
        timeout: options.timeoutMs,
        killSignal: "SIGKILL",
        maxBuffer: 1024 * 1024,
        ...(options.signal ? { signal: options.signal } : {}),
      },
      (error, stdout, stderr) => {
        if (error) reject(new RunFailure(error, stderr));
        else resolve({ stdout, stderr });
      },
    );
  });
}

function diagnostics(stderr: string): string {
  const text = stderr.trim();
  return text.length > MAX_DIAGNOSTICS_CHARS ? `${text.slice(0, MAX_DIAGNOSTICS_CHARS)}…` : text;
}

/** Turns a failed compiler run into the error the caller sees. */
function compilerError(err: unknown, ccPath: string, what: string, hint: string, options: RunOptions): Error {
  if (!(err instanceof RunFailure)) return new InternalError(`Cannot ${what} with "${ccPath}"`, { cause: err });
  const { error, stderr } = err;
  if (options.signal?.aborted || error.name === "AbortError") {
    return new AbortedError(`Cannot ${what} with "${ccPath}": aborted`, { cause: err });
  }
  if (error.killed === true) {
    return new TimeoutError(`Cannot ${what} with "${ccPath}": no result within ${options.timeoutMs} ms`, { cause: err });
  }
  if (error.code === "ENOENT" || error.code === "EACCES") {
    return new UnsupportedCapabilityError(`Cannot ${what}: C compiler "${ccPath}" not found`, { cause: err, hint });
  }
  const detail = diagnostics(stderr);
  return new UnsupportedCapabilityError(`Cannot ${what} with "${ccPath}"${detail === "" ? "" : `: ${detail}`}`, {
    cause: err,
    hint,
  });
}

export interface BuildCProgramOptions {
  /** The C source file. */
  readonly sourcePath: string;
  /** File name of the program inside its store directory. */
  readonly name: string;
  /** Compiler flags; part of the store key. */
  readonly cflags: readonly string[];
  /** Directory holding built programs (absolute). */
  readonly outRoot: string;
  /** Mode of the per-key directory when it is created. */
  readonly dirMode: number;
  /** What the build is, for errors: "build the guest helper". */
  readonly what: string;
  /** What to do when there is no working compiler. */
  readonly hint: string;
  /** The C compiler to run. @default "cc" */
  readonly ccPath?: string | undefined;
  /** Limit on each compiler run. @default 120_000 */
  readonly timeoutMs?: number | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Why a built (or stored) program must not be used, or undefined when it may. */
  readonly refuse?: ((bytes: Buffer) => string | undefined) | undefined;
}

export interface CProgram {
  /** Absolute path of the executable. */
  readonly path: string;
  /** `sha256:<hex>` of the executable. */
  readonly digest: string;
}

const digestOf = (bytes: Buffer): string => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/**
 * Compiles `sourcePath` (or finds the same build already stored).
 * @throws UnsupportedCapabilityError (with `hint`) when there is no compiler, the build fails or
 *   `refuse` refuses it; TimeoutError / AbortedError when a compiler run is cut short.
 */
export async function buildCProgram(options: BuildCProgramOptions): Promise<CProgram> {
  const { outRoot, name, cflags, sourcePath, what, hint } = options;
  if (!isAbsolute(outRoot)) throw new InvalidArgumentError(`Invalid outRoot "${outRoot}": must be an absolute path`);
  const ccPath = options.ccPath ?? "cc";
  const runOptions: RunOptions = { timeoutMs: options.timeoutMs ?? 120_000, signal: options.signal };
  let source: Buffer;
  try {
    source = await readFile(sourcePath);
  } catch (err) {
    throw new InternalError(`Cannot read the source "${sourcePath}" to ${what}`, { cause: err });
  }
  let version: string;
  try {
    version = (await run(ccPath, ["--version"], runOptions)).stdout;
  } catch (err) {
    throw compilerError(err, ccPath, what, hint, runOptions);
  }
  const key = createHash("sha256").update(source).update("\0").update(version).update("\0").update(cflags.join(" ")).digest("hex");
  const dir = join(outRoot, key);
  const path = join(dir, name);
  const stored = await readFile(path).catch(() => undefined);
  if (stored !== undefined && options.refuse?.(stored) === undefined) return { path, digest: digestOf(stored) };

  await mkdir(dir, { recursive: true, mode: options.dirMode });
  await removeDeadTemps(dir);
  return publishFile(
    path,
    async (tmp) => {
      try {
        await run(ccPath, [...cflags, "-o", tmp, sourcePath], runOptions);
      } catch (err) {
        throw compilerError(err, ccPath, what, hint, runOptions);
      }
      const bytes = await readFile(tmp);
      const refused = options.refuse?.(bytes);
      if (refused !== undefined) throw new UnsupportedCapabilityError(`Cannot ${what} with "${ccPath}": ${refused}`, { hint });
      return { path, digest: digestOf(bytes) };
    },
    { mode: 0o555 },
  );
}
