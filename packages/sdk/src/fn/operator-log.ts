/**
 * The operator log of function errors: one JSON line per failed call, keyed by errorId, holding
 * what production mode keeps from the caller (the stack). One file per function id,
 * `<dir>/<id>.jsonl`, mode 0600 in a 0700 directory; past 8 MiB it is moved to `<id>.jsonl.1`
 * (one generation kept). `mvmctl logs --fn ID` prints it.
 */
import { appendFileSync, mkdirSync, readFileSync, renameSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import * as z from "zod";
import { FN_ERROR_KINDS, FUNCTION_ID_PATTERN, MAX_FN_STACK_CHARS, checkFunctionId, parseJsonStrict } from "@mvm/protocol";

/** Overrides where operator logs are kept. */
export const FN_LOG_DIR_ENV = "MVM_FN_LOG_DIR";
/** Size past which a log is rotated, in bytes. */
export const MAX_FN_LOG_BYTES = 8 * 1024 * 1024;

export const FnLogEntry = z.strictObject({
  time: z.string().max(40),
  functionId: z.string().regex(FUNCTION_ID_PATTERN),
  errorId: z.string().regex(/^fe_[0-9a-f]{24}$/),
  kind: z.enum(FN_ERROR_KINDS),
  message: z.string().max(200),
  sandboxId: z.string().max(64).optional(),
  stack: z.string().max(MAX_FN_STACK_CHARS).optional(),
});
export type FnLogEntry = z.infer<typeof FnLogEntry>;

/** The directory of operator logs: $MVM_FN_LOG_DIR, else $XDG_STATE_HOME/mvm/fn-logs, else ~/.local/state/mvm/fn-logs. */
export function fnLogDir(env: Readonly<Record<string, string | undefined>> = process.env): string {
  const explicit = env[FN_LOG_DIR_ENV];
  if (explicit) return explicit;
  return join(env["XDG_STATE_HOME"] || join(homedir(), ".local", "state"), "mvm", "fn-logs");
}

/** Appends one entry; a log that cannot be written is reported on stderr, never thrown. */
export function appendFnLog(entry: FnLogEntry, dir: string = fnLogDir()): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, `${checkFunctionId(entry.functionId)}.jsonl`);
    const size = statSync(file, { throwIfNoEntry: false })?.size ?? 0;
    if (size > MAX_FN_LOG_BYTES) renameSync(file, `${file}.1`);
    appendFileSync(file, `${JSON.stringify(FnLogEntry.parse(entry))}\n`, { mode: 0o600 });
  } catch (err) {
    process.stderr.write(`mvm: cannot write the function operator log in "${dir}": ${err instanceof Error ? err.message : String(err)}\n`);
  }
}

/** The entries of function `id`, oldest first (rotated generation included); lines that do not parse are skipped. */
export function readFnLog(id: string, dir: string = fnLogDir()): FnLogEntry[] {
  checkFunctionId(id);
  const out: FnLogEntry[] = [];
  for (const file of [join(dir, `${id}.jsonl.1`), join(dir, `${id}.jsonl`)]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n")) {
      if (line === "") continue;
      try {
        const parsed = FnLogEntry.safeParse(parseJsonStrict(line, { maxDepth: 2 }));
        if (parsed.success) out.push(parsed.data);
      } catch {
        // A torn or foreign line: skipped.
      }
    }
  }
  return out;
}
