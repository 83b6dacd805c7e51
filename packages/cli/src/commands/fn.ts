/**
 * Functions from the command line (docs/FUNCTIONS.md):
 *   mvmctl fn run FILE#EXPORT [-- ARGS_JSON]   one call in a sandbox of its own; the result as JSON on stdout
 *   mvmctl logs --fn ID                       the operator log of function ID (see network.ts `logs`)
 * FILE is imported on this host (TypeScript through the SDK's loader hooks): it is the caller's
 * own code. EXPORT is an `fn(...)` function, or a plain function run as function EXPORT.
 */
import { extname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import * as vm from "node:vm";
import { InvalidArgumentError, UnsupportedCapabilityError, parseJsonStrict, type EngineApi } from "@mvm/protocol";
import { defineCommand, type CommandContext } from "../command.js";
import { booleanFlag, decimalFlag, stringFlag } from "../flags.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

const TYPESCRIPT = new Set([".ts", ".mts", ".cts"]);

interface FnRunOptions {
  file: string;
  exportName: string;
  args: unknown[];
  image: string | undefined;
  backend: string | undefined;
  timeoutSeconds: number | undefined;
  development: boolean;
}

/** `FILE#EXPORT` → its parts; EXPORT defaults to "default". */
export function parseTarget(target: string): { file: string; exportName: string } {
  const hash = target.lastIndexOf("#");
  const file = hash < 0 ? target : target.slice(0, hash);
  const exportName = hash < 0 ? "default" : target.slice(hash + 1);
  if (file === "") throw new UsageError(`Invalid target "${target}": no file`, { hint: "mvmctl fn run ./fns.ts#add -- '[2, 3]'" });
  if (!/^[A-Za-z_$][A-Za-z0-9_$]{0,127}$/.test(exportName)) throw new UsageError(`Invalid export name "${exportName.slice(0, 64)}"`);
  return { file, exportName };
}

/** ARGS_JSON: a JSON array of arguments, read with the strict decoder. */
export function parseArgsJson(words: readonly string[] | undefined): unknown[] {
  if (words === undefined || words.length === 0) return [];
  if (words.length > 1) throw new UsageError("Give the arguments as one JSON array after --", { hint: "mvmctl fn run ./fns.ts#add -- '[2, 3]'" });
  let value: unknown;
  try {
    value = parseJsonStrict(words[0]!, { maxDepth: 64 });
  } catch (err) {
    throw new UsageError(`ARGS_JSON is not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(value)) throw new UsageError("ARGS_JSON must be a JSON array of arguments", { hint: "mvmctl fn run ./fns.ts#add -- '[2, 3]'" });
  return value;
}

/** A function id for a plain exported function: its name in kebab case. */
export function idFor(exportName: string): string {
  const kebab = exportName.replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "");
  const id = /^[a-z]/.test(kebab) ? kebab : `fn-${kebab}`;
  return id.slice(0, 63).replace(/-+$/, "");
}

interface Callable {
  call(args: unknown[], options: { engine: EngineApi; signal: AbortSignal; onStdout: (c: string) => unknown; onStderr: (c: string) => unknown }): Promise<unknown>;
}

/**
 * A real dynamic import of the caller's file. The shipped mvmctl is one CommonJS bundle run by a
 * vm.Script: there the bundler turns `import()` into `require()` (which loads neither ES modules
 * nor TypeScript through the loader hooks), and code the script compiles has no dynamic-import
 * callback. A function compiled with the main context's default loader has the real operator
 * (Node prints an ExperimentalWarning for that option); from the unbundled modules a plain
 * Function-compiled `import()` works and is tried first.
 */
async function importModule(specifier: string): Promise<Record<string, unknown>> {
  try {
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    return await (new Function("specifier", "return import(specifier)") as (s: string) => Promise<Record<string, unknown>>)(specifier);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING") throw err;
  }
  const loader = (vm.constants as unknown as { USE_MAIN_CONTEXT_DEFAULT_LOADER?: symbol } | undefined)?.USE_MAIN_CONTEXT_DEFAULT_LOADER;
  if (loader === undefined) throw new UnsupportedCapabilityError("This Node.js cannot import a file from the bundled mvmctl", { hint: "use Node.js 20.12 or later" });
  const load = vm.compileFunction("return import(specifier)", ["specifier"], { importModuleDynamically: loader as never }) as (s: string) => Promise<Record<string, unknown>>;
  return load(specifier);
}

function isFunctionObject(v: unknown): v is Callable {
  const o = v as { call?: unknown; spec?: unknown; id?: unknown } | null;
  return o !== null && typeof o === "object" && typeof o.call === "function" && typeof o.spec === "function" && typeof o.id === "string";
}

async function loadFunction(options: FnRunOptions): Promise<Callable> {
  if (TYPESCRIPT.has(extname(options.file))) await import("@mvm/sdk/ts-register");
  const mod = await importModule(pathToFileURL(resolve(options.file)).href);
  const target = mod[options.exportName];
  const sdk = await import("@mvm/sdk");
  // An fn(...) function, possibly from another copy of the SDK than mvmctl's own: by shape.
  if (isFunctionObject(target)) return target;
  if (typeof target === "function") {
    return sdk.fn(
      {
        id: idFor(options.exportName),
        ...(options.image !== undefined ? { image: options.image } : {}),
        ...(options.backend !== undefined ? { backend: options.backend as "namespace" | "vm" } : {}),
        ...(options.timeoutSeconds !== undefined ? { timeoutSeconds: options.timeoutSeconds } : {}),
        errorMode: options.development ? "development" : "production",
      },
      target as (...a: never[]) => unknown,
    ) as unknown as Callable;
  }
  throw new InvalidArgumentError(`"${options.file}" has no function export "${options.exportName}"`);
}

export const fnRunCommand = defineCommand<FnRunOptions>({
  name: "fn run",
  summary: "Run one call of a function in a sandbox of its own",
  usage: "FILE#EXPORT [-- ARGS_JSON]",
  details:
    "EXPORT is an fn(...) function or a plain function (run as function EXPORT in kebab case). The result is printed as JSON on stdout; " +
    "the function's own stdout and stderr go to stderr. A failure prints its kind and errorId; `mvmctl logs --fn ID` shows its stack.",
  flags: {
    image: { type: "string", valueName: "REF", description: "Image of a plain function's sandbox" },
    backend: { type: "string", valueName: "NAME", description: "Backend of a plain function's sandbox" },
    timeout: { type: "string", valueName: "SECONDS", description: "Invoke timeout of a plain function (default 60)" },
    dev: { type: "boolean", description: "Development errors for a plain function: the stack is printed" },
  },
  positionals: { min: 1, max: 1 },
  trailingCommand: true,
  connection: "auto",
  parse: (raw) => ({
    ...parseTarget(raw.positionals[0] ?? ""),
    args: parseArgsJson(raw.trailing),
    image: stringFlag(raw, "image"),
    backend: stringFlag(raw, "backend"),
    timeoutSeconds: decimalFlag(raw, "timeout"),
    development: booleanFlag(raw, "dev"),
  }),
  async run(ctx, options) {
    const f = await loadFunction(options);
    return withEngine(ctx, async (engine) => {
      const toStderr = (c: string): void => void ctx.io.stderr.write(c);
      const value = await f.call(options.args, { engine, signal: ctx.signal, onStdout: toStderr, onStderr: toStderr });
      ctx.io.stdout.write(`${JSON.stringify(value === undefined ? null : value)}\n`);
      return 0;
    });
  },
});

/** `mvmctl logs --fn ID`: the operator log of a function (stacks of failed calls by errorId). */
export async function printFnLog(ctx: CommandContext, id: string): Promise<number> {
  const { readFnLog } = await import("@mvm/sdk");
  const entries = readFnLog(id);
  for (const e of entries) {
    if (ctx.global.json) ctx.io.stdout.write(`${JSON.stringify(e)}\n`);
    else ctx.out.human(`${e.time} ${e.errorId} ${e.kind}: ${e.message}${e.sandboxId ? ` (${e.sandboxId})` : ""}\n${(e.stack ?? "").replace(/^/gm, "    ")}\n`);
  }
  return 0;
}
