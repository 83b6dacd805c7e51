/**
 * Module customization hooks that let Node run a TypeScript script as it is, for record mode
 * (`mvmctl plan --mode record app.ts`): each `.ts`/`.mts` file is transpiled on load with
 * the TypeScript compiler's `transpileModule` (types are erased, never checked), and an import
 * of `./x.js` that names no file finds `./x.ts` (the spelling TypeScript's NodeNext resolution
 * asks for). `.ts` and `.mts` files load as ES modules; `.cts` (CommonJS) is not supported.
 *
 * Registered by ts-register.ts (`node --import @mvm/sdk/ts-register app.ts`). The compiler (the
 * optional package `typescript`) is loaded when the first TypeScript file is.
 */
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import type { LoadHookContext, ResolveHookContext } from "node:module";
import type * as TS from "typescript";
import { importOptional } from "./_internal/optional-package.js";

type NextResolve = (specifier: string, context?: ResolveHookContext) => Promise<{ url: string; format?: string | null }>;
type NextLoad = (url: string, context?: LoadHookContext) => Promise<{ format: string; source?: string | ArrayBuffer | Uint8Array | null }>;

let compiler: Promise<typeof TS> | undefined;

const TS_EXTENSION = /\.(ts|mts)$/;
const JS_TO_TS: Record<string, string> = { ".js": ".ts", ".mjs": ".mts" };

export async function resolve(specifier: string, context: ResolveHookContext, next: NextResolve): Promise<{ url: string; format?: string | null; shortCircuit?: boolean }> {
  try {
    return await next(specifier, context);
  } catch (err) {
    const relative = specifier.startsWith("./") || specifier.startsWith("../") || specifier.startsWith("file:");
    const fromTs = context.parentURL !== undefined && TS_EXTENSION.test(new URL(context.parentURL).pathname);
    const ext = /\.(js|mjs)$/.exec(specifier)?.[0];
    if ((err as NodeJS.ErrnoException).code !== "ERR_MODULE_NOT_FOUND" || !relative || !fromTs || ext === undefined) throw err;
    return next(specifier.slice(0, -ext.length) + JS_TO_TS[ext]!, context);
  }
}

export async function load(url: string, context: LoadHookContext, next: NextLoad): Promise<{ format: string; source?: string | ArrayBuffer | Uint8Array | null; shortCircuit?: boolean }> {
  if (!url.startsWith("file:") || !TS_EXTENSION.test(new URL(url).pathname)) return next(url, context);
  const path = fileURLToPath(url);
  compiler ??= importOptional<typeof TS>("typescript", "Running a TypeScript file");
  const ts = await compiler;
  const out = ts.transpileModule(await readFile(path, "utf8"), {
    fileName: path,
    reportDiagnostics: false,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      inlineSourceMap: true,
      inlineSources: true,
    },
  });
  return { format: "module", source: out.outputText, shortCircuit: true };
}
