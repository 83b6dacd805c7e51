/**
 * Turns a function value into the code a sandbox runs: its source (`Function.prototype.toString`)
 * as a CommonJS module, bundled by esbuild with the packages it requires. A function that uses a
 * name from the host it was defined in (a closure over a local variable, an import of the
 * defining module) cannot work in a sandbox, where that name does not exist: such a function is
 * refused here, when it is defined, by FunctionDefinitionError naming what it closes over.
 *
 * The free names are found with the TypeScript checker over the source alone (no lib files): a
 * name it cannot resolve inside the function is allowed only when it is a global of this Node.js
 * (`globalThis`) or one of CommonJS's (`require`, `module`, `exports`, `__filename`, `__dirname`).
 */
import { createHash } from "node:crypto";
import { builtinModules } from "node:module";
import type * as TS from "typescript";
import type * as Esbuild from "esbuild";
import { InvalidArgumentError } from "@mvm/protocol";
import { requireOptional } from "../_internal/optional-package.js";

/** A function that cannot be shipped to a sandbox as written. */
export class FunctionDefinitionError extends InvalidArgumentError {
  constructor(
    readonly functionId: string,
    message: string,
    options: { cause?: unknown; hint?: string } = {},
  ) {
    super(message, options);
  }
}

export interface BundleOptions {
  /** Packages the function may `require`/`import`; each is bundled with it. */
  readonly dependencies?: readonly string[];
  /** Where packages are resolved from. @default process.cwd() */
  readonly resolveDir?: string;
}

export interface FunctionBundle {
  /** CommonJS module whose `module.exports` is the function. */
  readonly code: string;
  /** sha256 hex of `code`. */
  readonly sha256: string;
  /** The function's parameter names (destructured ones flattened). */
  readonly parameterNames: readonly string[];
}

const COMMONJS_NAMES = new Set(["require", "module", "exports", "__filename", "__dirname", "arguments", "undefined", "NaN", "Infinity", "globalThis"]);

/** The module text for a function's source; method shorthand (`add(a, b) {}`) is accepted too. */
function moduleText(ts: typeof TS, source: string): { text: string; sf: TS.SourceFile } | undefined {
  for (const text of [`module.exports = (${source}\n);\n`, `module.exports = Object.values({ ${source}\n })[0];\n`]) {
    const sf = ts.createSourceFile("fn.js", text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.JS);
    const diagnostics = (sf as unknown as { parseDiagnostics?: readonly unknown[] }).parseDiagnostics ?? [];
    if (diagnostics.length === 0) return { text, sf };
  }
  return undefined;
}

/** Names the function uses but does not define, that are not globals. */
function freeNames(ts: typeof TS, sf: TS.SourceFile): { free: string[]; params: string[]; imports: string[] } {
  const host = ts.createCompilerHost({ noLib: true, allowJs: true });
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, ...rest) => (name === sf.fileName ? sf : getSourceFile(name, ...rest));
  const program = ts.createProgram([sf.fileName], { noLib: true, allowJs: true, noResolve: true, types: [] }, host);
  const checker = program.getTypeChecker();
  const free = new Set<string>();
  const params: string[] = [];
  const imports: string[] = [];
  const visit = (node: TS.Node): void => {
    if (ts.isCallExpression(node) && (node.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(node.expression) && node.expression.text === "require"))) {
      const arg = node.arguments[0];
      imports.push(arg !== undefined && ts.isStringLiteralLike(arg) ? arg.text : "");
    }
    if (ts.isParameter(node)) collectBindingNames(ts, node.name, params);
    if (ts.isIdentifier(node) && isReference(ts, node)) {
      const name = node.text;
      const symbol = ts.isShorthandPropertyAssignment(node.parent)
        ? checker.getShorthandAssignmentValueSymbol(node.parent)
        : checker.getSymbolAtLocation(node);
      if (symbol === undefined && !COMMONJS_NAMES.has(name) && !(name in globalThis)) free.add(name);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return { free: [...free], params, imports };
}

function collectBindingNames(ts: typeof TS, name: TS.BindingName, out: string[]): void {
  if (ts.isIdentifier(name)) out.push(name.text);
  else for (const el of name.elements) if (!ts.isOmittedExpression(el)) collectBindingNames(ts, el.name, out);
}

/** Whether an identifier is read as a value (not a property name, label or declaration). */
function isReference(ts: typeof TS, id: TS.Identifier): boolean {
  const p = id.parent;
  if (ts.isPropertyAccessExpression(p) && p.name === id) return false;
  if (ts.isQualifiedName(p) && p.right === id) return false;
  if ((ts.isPropertyAssignment(p) || ts.isMethodDeclaration(p) || ts.isPropertyDeclaration(p) || ts.isGetAccessor(p) || ts.isSetAccessor(p)) && p.name === id) return false;
  if ((ts.isLabeledStatement(p) || ts.isBreakOrContinueStatement(p)) && p.label === id) return false;
  if (ts.isBindingElement(p) && p.propertyName === id) return false;
  if (ts.isMetaProperty(p)) return false;
  return true;
}

const BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** The package a bare specifier names (`@scope/pkg/sub` → `@scope/pkg`). */
function packageOf(spec: string): string {
  const parts = spec.split("/");
  return spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

/**
 * Bundles `impl` for function `id`. Throws FunctionDefinitionError when the source cannot be
 * read back (native or bound functions), when it uses host names it does not define, or when it
 * requires a package not listed in `dependencies` (or one esbuild cannot resolve); MissingPackageError
 * when the optional package `typescript` or `esbuild` is not installed.
 */
export function bundleFunction(id: string, impl: (...args: never[]) => unknown, options: BundleOptions = {}): FunctionBundle {
  if (typeof impl !== "function") throw new FunctionDefinitionError(id, `Function "${id}" needs an implementation, got ${typeof impl}`);
  const source = Function.prototype.toString.call(impl);
  if (/\{\s*\[native code\]\s*\}\s*$/.test(source)) {
    throw new FunctionDefinitionError(id, `Cannot ship function "${id}": its source is not available (a native or bound function)`);
  }
  if (/^class[\s{]/.test(source)) throw new FunctionDefinitionError(id, `Cannot ship function "${id}": it is a class, not a function`);
  const ts = requireOptional<typeof TS>("typescript", "Shipping a function to a sandbox (fn)");
  const mod = moduleText(ts, source);
  if (!mod) throw new FunctionDefinitionError(id, `Cannot ship function "${id}": its source does not parse as a function`);
  const { free, params, imports } = freeNames(ts, mod.sf);
  if (free.length > 0) {
    const names = free.slice(0, 8).map((n) => `"${n}"`).join(", ");
    throw new FunctionDefinitionError(
      id,
      `Cannot ship function "${id}": it uses ${names} from the code around it, which does not exist in the sandbox`,
      { hint: "define what the function needs inside it, pass it as an argument, or require() a package listed in dependencies" },
    );
  }
  const declared = new Set(options.dependencies ?? []);
  for (const spec of imports) {
    if (spec === "") throw new FunctionDefinitionError(id, `Cannot ship function "${id}": a require() or import() of a computed name cannot be bundled`);
    if (spec.startsWith(".") || spec.startsWith("/")) {
      throw new FunctionDefinitionError(id, `Cannot ship function "${id}": it requires the file "${spec}"; put the code in a package listed in dependencies`);
    }
    if (!BUILTINS.has(spec) && !declared.has(packageOf(spec))) {
      throw new FunctionDefinitionError(id, `Cannot ship function "${id}": package "${packageOf(spec)}" is not in its dependencies`, {
        hint: `add it: fn({ id: "${id}", dependencies: ["${packageOf(spec)}"] }, ...)`,
      });
    }
  }
  const esbuild = requireOptional<typeof Esbuild>("esbuild", "Bundling a function for a sandbox (fn)");
  let code: string;
  try {
    const out = esbuild.buildSync({
      stdin: { contents: mod.text, loader: "js", resolveDir: options.resolveDir ?? process.cwd(), sourcefile: `fn-${id}.js` },
      bundle: true,
      write: false,
      platform: "node",
      format: "cjs",
      target: "node20",
      logLevel: "silent",
      legalComments: "none",
    });
    code = out.outputFiles[0]!.text;
  } catch (err) {
    const first = (err as { errors?: { text?: string }[] }).errors?.[0]?.text ?? (err instanceof Error ? err.message : String(err));
    throw new FunctionDefinitionError(id, `Cannot bundle function "${id}": ${first}`, { cause: err });
  }
  return { code, sha256: createHash("sha256").update(code).digest("hex"), parameterNames: params };
}
