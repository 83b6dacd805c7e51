/**
 * `mvmctl plan FILE`: the signed execution plans of the sandboxes a script would create, for
 * review, booting nothing.
 * - static (default): the script's source is parsed with the TypeScript compiler API and its
 *   `Sandbox.create({...})` declarations are read; the script is never imported or run.
 * - record: the script runs under node with a recording transport (the SDK boots nothing and
 *   answers every call with an empty success); its create calls are what it would have asked for.
 *   A TypeScript script (.ts, .mts) runs with @mvm/sdk/ts-register: types erased on load.
 * Each workload is then planned by the engine (image resolved to its digest, limits after
 * defaults) and signed with the host key.
 */
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { extname, join, resolve } from "node:path";
import { InvalidArgumentError, type CreateSandboxRequest, type EngineApi } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { integerFlag, stringFlag } from "../flags.js";
import { describePlan, planText, type PlanBundle } from "../plan-file.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";
import { cliCreateRequest } from "../tier-warning.js";
import { analyzePython, pythonInterpreter } from "./plan-python.js";

export interface PlanCommandOptions {
  file: string;
  mode: "static" | "record";
  out: string | undefined;
  validForSeconds: number | undefined;
  recordTimeoutSeconds: number;
  python: string | undefined;
}

interface Found {
  location?: { line: number; column: number };
  request: CreateSandboxRequest;
  commands: string[][];
}

const TYPESCRIPT = new Set([".ts", ".mts"]);
const RECORDABLE = new Set([".js", ".mjs", ".cjs", ...TYPESCRIPT]);

export const planCommand = defineCommand<PlanCommandOptions>({
  name: "plan",
  summary: "Sign the execution plans of the sandboxes a script would create, booting nothing",
  usage: "[flags] FILE",
  details:
    "--mode static (default) reads Sandbox.create({...}) declarations from TS/JS source without\n" +
    "running it; a declaration whose options are not literal values is reported and not planned.\n" +
    "A Python script (.py) is read by the mvm Python package's static analysis (ast; never imported),\n" +
    "run with --python, else $MVM_PYTHON, else /usr/bin/python3 (docs/PYTHON.md).\n" +
    "--mode record runs the script (JavaScript, or TypeScript with types erased) with a recording SDK transport that boots nothing.\n" +
    "The plans are printed for review and, with --out, written as a bundle that\n" +
    "`mvmctl create|run --plan FILE [--plan-index N]` admits (each plan once, within its validity).",
  flags: {
    mode: { type: "string", valueName: "static|record", description: "How to find the workloads (default: static)" },
    out: { type: "string", short: "o", valueName: "FILE", description: "Write the plan bundle (canonical JSON, mode 0600) to FILE" },
    "valid-for": { type: "string", valueName: "SECONDS", description: "How long the plans may be used (default 3600, at most 86400)" },
    "record-timeout": { type: "string", valueName: "SECONDS", description: "With --mode record: stop the script after this long (default 300)" },
    python: { type: "string", valueName: "PATH", description: "For a .py script: the Python with the mvm package (default: $MVM_PYTHON, else /usr/bin/python3)" },
  },
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse(raw) {
    const mode = stringFlag(raw, "mode") ?? "static";
    if (mode !== "static" && mode !== "record") throw new UsageError(`Invalid value "${mode}" for --mode: expected static or record`);
    const validForSeconds = integerFlag(raw, "valid-for");
    if (validForSeconds !== undefined && (validForSeconds < 1 || validForSeconds > 86400)) {
      throw new UsageError(`Invalid value "${validForSeconds}" for --valid-for: expected 1 to 86400 seconds`);
    }
    const recordTimeoutSeconds = integerFlag(raw, "record-timeout") ?? 300;
    if (recordTimeoutSeconds < 1) throw new UsageError("--record-timeout must be at least 1 second");
    const file = raw.positionals[0]!;
    if (mode === "record" && extname(file) === ".py") {
      throw new UsageError("--mode record runs JavaScript or TypeScript; a Python script is planned statically", { hint: "Drop --mode record" });
    }
    if (mode === "record" && !RECORDABLE.has(extname(file))) {
      throw new UsageError(`--mode record runs JavaScript or TypeScript (.js, .mjs, .cjs, .ts, .mts), not "${extname(file) || file}"`, {
        hint: "Compile the script to one of those first, or use --mode static, which reads the source without running it",
      });
    }
    return { file, mode, out: stringFlag(raw, "out"), validForSeconds, recordTimeoutSeconds, python: stringFlag(raw, "python") };
  },
  async run(ctx, options) {
    const diagnostics: PlanBundle["diagnostics"] = [];
    let found: Found[];
    let skipped = 0;
    if (options.mode === "static" && extname(options.file) === ".py") {
      const analysis = await analyzePython(options.file, { python: pythonInterpreter(options.python, ctx.io.env), env: ctx.io.env, signal: ctx.signal });
      diagnostics.push(...analysis.diagnostics);
      found = [];
      for (const w of analysis.workloads) {
        if (w.request === undefined) {
          skipped++;
          ctx.out.note(`${options.file}:${w.location.line}:${w.location.column}: not planned: its options are not all literal values (see the diagnostics)`);
          continue;
        }
        found.push({ location: w.location, request: w.request, commands: w.commands });
      }
    } else if (options.mode === "static") {
      const { analyzeSource } = await import("@mvm/sdk");
      const analysis = await analyzeSource(options.file);
      diagnostics.push(...analysis.diagnostics);
      found = [];
      for (const w of analysis.workloads) {
        const at = `${options.file}:${w.location.line}:${w.location.column}`;
        for (const f of w.forks) {
          const what = f.count === undefined ? "sandboxes" : f.count === 1 ? "1 sandbox" : `${f.count} sandboxes`;
          ctx.out.note(`${options.file}:${f.location.line}:${f.location.column}: forks ${what} from the sandbox of line ${w.location.line} when the script runs; they are admitted then, not planned here`);
        }
        if (w.origin !== undefined) {
          ctx.out.note(`${at}: not planned: it starts from the snapshot the script takes at line ${w.origin.snapshot.line}; it is admitted when the script runs`);
          continue;
        }
        if (!w.complete) {
          skipped++;
          ctx.out.note(`${options.file}:${w.location.line}:${w.location.column}: not planned: its options are not all literal values (see the diagnostics; --mode record runs the script instead)`);
          continue;
        }
        found.push({ location: w.location, request: w.request, commands: w.commands });
      }
    } else {
      found = await recordWorkloads(options, (line) => ctx.out.note(line));
    }
    for (const d of diagnostics) ctx.out.note(`${options.file}:${d.line}:${d.column}: ${d.message}`);
    if (found.length === 0) {
      throw new InvalidArgumentError(`No sandbox to plan in "${options.file}"`, {
        hint: options.mode === "static" ? "It must call Sandbox.create({...}) from @mvm/sdk with literal options" : "The script created no sandbox",
      });
    }
    return withEngine(ctx, async (engine) => {
      const bundle: PlanBundle = { version: 1, source: resolve(options.file), mode: options.mode, workloads: [], diagnostics };
      for (const w of found) {
        const plan = await planOne(engine, cliCreateRequest(w.request, ctx.io.env), options.validForSeconds, ctx.signal);
        bundle.workloads.push({ ...(w.location ? { location: w.location } : {}), commands: w.commands, plan });
      }
      for (const [i, w] of bundle.workloads.entries()) {
        const where = w.location ? ` (${options.file}:${w.location.line})` : "";
        ctx.out.human(`# workload ${i}${where}\n${describePlan(w.plan)}`);
        for (const c of w.commands) ctx.out.human(`  runs       ${JSON.stringify(c)}\n`);
      }
      if (options.out !== undefined) {
        await writeFile(options.out, planText(bundle), { mode: 0o600 });
        ctx.out.note(`wrote ${bundle.workloads.length} plan(s) to ${options.out}`);
      }
      ctx.out.jsonResult(bundle);
      // Exit 1 when a declaration could not be planned: the bundle is not the whole script.
      return skipped > 0 ? 1 : 0;
    });
  },
});

function planOne(engine: EngineApi, request: CreateSandboxRequest, validForSeconds: number | undefined, signal: AbortSignal) {
  return engine.planSandbox(request, validForSeconds !== undefined ? { signal, validForSeconds } : { signal });
}

/** Runs the script under node with MVM_RECORD_FILE set and reads what it recorded. */
async function recordWorkloads(options: PlanCommandOptions, note: (line: string) => void): Promise<Found[]> {
  const { readRecording } = await import("@mvm/sdk");
  const dir = await mkdtemp(join(tmpdir(), "mvm-record-"));
  try {
    const recordFile = join(dir, "recording.json");
    // TypeScript runs through the SDK's loader hooks (types erased on load, not checked).
    const loader = TYPESCRIPT.has(extname(options.file)) ? ["--import", import.meta.resolve("@mvm/sdk/ts-register")] : [];
    const child = spawn(process.execPath, [...loader, resolve(options.file)], {
      env: { ...process.env, MVM_RECORD_FILE: recordFile },
      stdio: ["ignore", "pipe", "pipe"],
    });
    // The script's own output goes to stderr: stdout is the plan's.
    child.stdout.on("data", (chunk: Buffer) => process.stderr.write(chunk));
    child.stderr.on("data", (chunk: Buffer) => process.stderr.write(chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.recordTimeoutSeconds * 1000);
    const code = await new Promise<number | null>((done, fail) => {
      child.once("error", fail);
      child.once("close", (c) => done(c));
    }).finally(() => clearTimeout(timer));
    if (code !== 0) note(`warning: the script exited with ${code === null ? "a signal" : `code ${code}`} while recording`);
    const recording = await readRecording(recordFile).catch((cause: unknown) => {
      throw new InvalidArgumentError(`The script "${options.file}" left no recording: ${(cause as Error).message}`, { cause });
    });
    const found: Found[] = [];
    for (const w of recording.workloads) {
      // A fork child, or a sandbox started from a snapshot the script took, starts from state
      // that exists only once the script runs: it is admitted then, not planned here.
      if (w.origin !== undefined) {
        const from = "forkOf" in w.origin ? `a fork of ${w.origin.forkOf}` : `started from a snapshot of ${w.origin.takenFrom} taken by the script`;
        note(`not planned: ${w.sandboxId} is ${from}; it is admitted when the script runs`);
        continue;
      }
      for (const s of w.snapshots ?? []) {
        const keep = "ttlSeconds" in s.request.retention ? `kept ${s.request.retention.ttlSeconds} s` : "kept until deleted";
        note(`${w.sandboxId} takes a snapshot (${keep}${s.request.memory === true ? ", with memory" : ""}${s.request.includeEnvSecrets === true ? ", with env secrets" : ""})`);
      }
      found.push({ request: w.request, commands: w.commands.map((c) => c.argv) });
    }
    return found;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
