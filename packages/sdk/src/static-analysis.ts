/**
 * Static mode: the sandboxes a TypeScript or JavaScript file declares, read from its source with
 * the TypeScript compiler API. The file is parsed, never imported, required or evaluated: what is
 * read is what the source spells out as literal values (strings, numbers, arrays, objects, `const`
 * names bound to such values) and the SDK's pure data builders (`NetworkPolicy…`, `SecretRef…`),
 * which are applied to their literal arguments. Anything else is reported, not guessed.
 */
import { extname } from "node:path";
import type * as TS from "typescript";
import { CreateSandboxRequest, NetworkPolicy, SecretRef } from "@mvm/protocol";
import { readBoundedText } from "./_internal/bounded-file.js";
import { importOptional } from "./_internal/optional-package.js";
import { functionRequestFields, type FunctionPlanOptions } from "./fn/function.js";

export interface SourceLocation {
  /** 1-based. */
  line: number;
  /** 1-based. */
  column: number;
}
export interface StaticDiagnostic extends SourceLocation {
  message: string;
}
/** One `Sandbox.create(...)` call and what can be known of it without running anything. */
export interface StaticWorkload {
  location: SourceLocation;
  /** The create request its options spell out (connection options left out), schema-checked. */
  request: CreateSandboxRequest;
  /** Commands run on the sandbox it returns (`sb.commands.run|start`), in source order. */
  commands: string[][];
  /** False when some option or command could not be read as a literal (see the diagnostics). */
  complete: boolean;
  /**
   * Set when `fromSnapshot` names a snapshot the script itself takes (`const snap = await
   * sb.snapshot(...)`; `fromSnapshot: snap.id`): the location of that `snapshot` call. Such a
   * sandbox starts from state that exists only once the script runs, so it cannot be planned
   * ahead; the engine admits it when it is created. Its `request` leaves `fromSnapshot` out.
   */
  origin?: { snapshot: SourceLocation };
  /** `sb.fork(...)` calls on this sandbox: where, and how many children (undefined when not a literal). */
  forks: StaticFork[];
}
export interface StaticFork {
  location: SourceLocation;
  count: number | undefined;
}
export interface StaticAnalysis {
  file: string;
  workloads: StaticWorkload[];
  diagnostics: StaticDiagnostic[];
}

/** Default largest source file read, in bytes. */
export const MAX_SOURCE_BYTES = 1024 * 1024;

/** Options the SDK takes beside the request: how to connect, not what to run. */
const CONNECTION_OPTIONS = new Set(["engine", "mode", "socketPath", "daemon", "engineOptions", "signal", "timeoutMs", "onProgress", "plan"]);
const SDK_MODULES = new Set(["@mvm/sdk", "@mvm/protocol"]);
/** Options of fn() that stay on the host: how calls stream, log and bundle, not what the sandbox is. */
const FUNCTION_HOST_OPTIONS = ["errorMode", "dependencies", "resolveDir", "onStdout", "onStderr", "onWarning", "logDir"];
const POLICY_METHODS = new Set(["allowHttps", "allowHttp", "allowTcp", "allowCidr"]);
const SECRET_FACTORIES = new Set(["from", "fromEnv", "fromFile"]);

/** What an expression evaluates to when it is not a literal. */
const NOT_STATIC: unique symbol = Symbol("not static");
type Value = unknown;

/**
 * Reads the sandbox declarations of a source file without running it.
 * @throws NotFoundError when the file does not exist; InvalidArgumentError when it is too large;
 *   MissingPackageError when the optional package `typescript` is not installed
 * @example
 * const { workloads, diagnostics } = await analyzeSource("agent.ts");
 */
export async function analyzeSource(path: string, options: { maxBytes?: number } = {}): Promise<StaticAnalysis> {
  const text = await readBoundedText(path, options.maxBytes ?? MAX_SOURCE_BYTES, "Source file");
  return analyzeSourceText(text, path);
}

/** {@link analyzeSource} on text in memory; `fileName`'s extension picks the syntax (TS, TSX, JS). */
export async function analyzeSourceText(text: string, fileName: string): Promise<StaticAnalysis> {
  const ts = await importOptional<typeof TS>("typescript", "Static analysis of a source file");
  return new Analyzer(ts, text, fileName).run();
}

function scriptKind(ts: typeof TS, fileName: string): TS.ScriptKind {
  switch (extname(fileName)) {
    case ".tsx":
      return ts.ScriptKind.TSX;
    case ".jsx":
      return ts.ScriptKind.JSX;
    case ".js":
    case ".mjs":
    case ".cjs":
      return ts.ScriptKind.JS;
    default:
      return ts.ScriptKind.TS;
  }
}

interface Found {
  location: SourceLocation;
  request: Record<string, unknown>;
  commands: string[][];
  complete: boolean;
  origin?: { snapshot: SourceLocation };
  forks: StaticFork[];
}

class Analyzer {
  readonly #ts: typeof TS;
  readonly #sf: TS.SourceFile;
  readonly #diagnostics: StaticDiagnostic[] = [];
  /** Local names of the SDK's exports: `Sandbox`, `NetworkPolicy`, `SecretRef`. */
  readonly #names = new Map<string, string>();
  /** Local names of namespace imports of the SDK (`import * as mvm`). */
  readonly #namespaces = new Set<string>();
  /** `const` names and their initializers; a name declared twice is left out. */
  readonly #consts = new Map<string, TS.Expression | null>();
  /** Variables holding a created sandbox → its workload. */
  readonly #sandboxVars = new Map<string, Found>();
  /** Variables holding a snapshot the script takes (`await sb.snapshot(...)`) → where it is taken. */
  readonly #snapshotVars = new Map<string, SourceLocation>();
  readonly #found: Found[] = [];

  constructor(ts: typeof TS, text: string, fileName: string) {
    this.#ts = ts;
    this.#sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, scriptKind(ts, fileName));
  }

  run(): StaticAnalysis {
    const ts = this.#ts;
    const parseDiagnostics = (this.#sf as unknown as { parseDiagnostics?: TS.DiagnosticWithLocation[] }).parseDiagnostics ?? [];
    for (const d of parseDiagnostics) {
      this.#diagnostics.push({ ...this.#at(d.start), message: `syntax: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}` });
    }
    this.#visit(this.#sf, (node) => this.#collectBindings(node));
    this.#visit(this.#sf, (node) => this.#collectCreates(node));
    this.#visit(this.#sf, (node) => this.#collectCommands(node));
    this.#visit(this.#sf, (node) => this.#collectForks(node));
    const workloads = this.#found.map((f) => this.#finish(f));
    return { file: this.#sf.fileName, workloads, diagnostics: this.#diagnostics };
  }

  #visit(node: TS.Node, fn: (node: TS.Node) => void): void {
    fn(node);
    this.#ts.forEachChild(node, (child) => this.#visit(child, fn));
  }

  #at(pos: number): SourceLocation {
    const { line, character } = this.#sf.getLineAndCharacterOfPosition(pos);
    return { line: line + 1, column: character + 1 };
  }

  #report(node: TS.Node, message: string): void {
    this.#diagnostics.push({ ...this.#at(node.getStart(this.#sf)), message });
  }

  /** Imports (ESM and `require`) of the SDK, and `const` declarations. */
  #collectBindings(node: TS.Node): void {
    const ts = this.#ts;
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier) && SDK_MODULES.has(node.moduleSpecifier.text)) {
      const bindings = node.importClause?.namedBindings;
      if (bindings && ts.isNamedImports(bindings)) {
        for (const el of bindings.elements) this.#names.set(el.name.text, (el.propertyName ?? el.name).text);
      } else if (bindings && ts.isNamespaceImport(bindings)) {
        this.#namespaces.add(bindings.name.text);
      }
      return;
    }
    if (!ts.isVariableDeclaration(node)) return;
    const init = node.initializer;
    if (init && ts.isCallExpression(init) && ts.isIdentifier(init.expression) && init.expression.text === "require") {
      const spec = init.arguments[0];
      if (spec && ts.isStringLiteral(spec) && SDK_MODULES.has(spec.text)) {
        if (ts.isIdentifier(node.name)) this.#namespaces.add(node.name.text);
        else if (ts.isObjectBindingPattern(node.name)) {
          for (const el of node.name.elements) {
            if (!ts.isIdentifier(el.name)) continue;
            const imported = el.propertyName && ts.isIdentifier(el.propertyName) ? el.propertyName.text : el.name.text;
            this.#names.set(el.name.text, imported);
          }
        }
        return;
      }
    }
    const list = node.parent;
    if (!ts.isIdentifier(node.name) || !ts.isVariableDeclarationList(list) || (list.flags & ts.NodeFlags.Const) === 0) return;
    const name = node.name.text;
    this.#consts.set(name, this.#consts.has(name) ? null : (node.initializer ?? null));
  }

  /** Is `expr` the SDK export `exported` (`Sandbox`, or `mvm.Sandbox` for a namespace import)? */
  #isExport(expr: TS.Expression, exported: string): boolean {
    const ts = this.#ts;
    if (ts.isIdentifier(expr)) return this.#names.get(expr.text) === exported;
    return ts.isPropertyAccessExpression(expr) && expr.name.text === exported && ts.isIdentifier(expr.expression) && this.#namespaces.has(expr.expression.text);
  }

  /** The variable a call's (awaited) result is bound to: `const x = await call(...)`. */
  #boundName(call: TS.Node): string | undefined {
    const ts = this.#ts;
    let parent: TS.Node = call.parent;
    while (ts.isAwaitExpression(parent) || ts.isParenthesizedExpression(parent)) parent = parent.parent;
    return ts.isVariableDeclaration(parent) && ts.isIdentifier(parent.name) ? parent.name.text : undefined;
  }

  /** The sandbox variable `expr` calls a method on (`sb.snapshot(…)` → sb's workload). */
  #sandboxOf(call: TS.CallExpression, method: string): Found | undefined {
    const ts = this.#ts;
    if (!ts.isPropertyAccessExpression(call.expression) || call.expression.name.text !== method) return undefined;
    const target = call.expression.expression;
    return ts.isIdentifier(target) ? this.#sandboxVars.get(target.text) : undefined;
  }

  /** `snap`, `snap.id` or `snap.digest` for a snapshot the script takes → where it is taken. */
  #takenSnapshot(expr: TS.Expression): SourceLocation | undefined {
    const ts = this.#ts;
    let node = unwrap(ts, expr);
    if (ts.isPropertyAccessExpression(node) && (node.name.text === "id" || node.name.text === "digest")) node = node.expression;
    return ts.isIdentifier(node) ? this.#snapshotVars.get(node.text) : undefined;
  }

  #collectCreates(node: TS.Node): void {
    const ts = this.#ts;
    if (ts.isCallExpression(node) && this.#isExport(node.expression, "fn")) {
      this.#collectFunction(node);
      return;
    }
    if (ts.isCallExpression(node) && this.#sandboxOf(node, "snapshot") !== undefined) {
      const name = this.#boundName(node);
      if (name !== undefined) this.#snapshotVars.set(name, this.#at(node.getStart(this.#sf)));
      return;
    }
    if (!ts.isCallExpression(node) || !ts.isPropertyAccessExpression(node.expression) || node.expression.name.text !== "create") return;
    if (!this.#isExport(node.expression.expression, "Sandbox")) return;
    const found: Found = { location: this.#at(node.getStart(this.#sf)), request: {}, commands: [], complete: true, forks: [] };
    const arg = node.arguments[0];
    if (arg !== undefined) {
      const options = unwrap(ts, arg);
      if (!ts.isObjectLiteralExpression(options)) {
        this.#report(arg, "Sandbox.create options are not an object literal: not read");
        found.complete = false;
      } else {
        let skip: ReadonlySet<string> = CONNECTION_OPTIONS;
        for (const prop of options.properties) {
          const value = ts.isPropertyAssignment(prop) ? prop.initializer : ts.isShorthandPropertyAssignment(prop) ? prop.name : undefined;
          if (value === undefined || prop.name === undefined || !ts.isIdentifier(prop.name) || prop.name.text !== "fromSnapshot") continue;
          const taken = this.#takenSnapshot(value);
          if (taken === undefined) continue;
          found.origin = { snapshot: taken };
          skip = new Set([...CONNECTION_OPTIONS, "fromSnapshot"]);
        }
        found.request = this.#object(options, "", found, skip);
      }
    }
    this.#found.push(found);
    // `const sb = await Sandbox.create(...)`, `await using sb = …`: later calls on sb are its commands.
    const name = this.#boundName(node);
    if (name !== undefined) this.#sandboxVars.set(name, found);
  }

  /**
   * `fn({ id, ... }, impl)`: the sandbox each call of the function gets, with the function spec
   * (id, wrapper format, limits) its plan records. The implementation is not read.
   */
  #collectFunction(node: TS.CallExpression): void {
    const ts = this.#ts;
    const found: Found = { location: this.#at(node.getStart(this.#sf)), request: {}, commands: [], complete: true, forks: [] };
    const arg = node.arguments[0];
    const options = arg === undefined ? undefined : unwrap(ts, arg);
    if (options === undefined || !ts.isObjectLiteralExpression(options)) {
      this.#report(arg ?? node, "fn options are not an object literal: not read");
      found.complete = false;
      this.#found.push(found);
      return;
    }
    const read = this.#object(options, "", found, new Set([...CONNECTION_OPTIONS, ...FUNCTION_HOST_OPTIONS]));
    const { id, format, timeoutSeconds, limits, warm, ...rest } = read;
    if (typeof id !== "string") {
      this.#report(options, "fn option \"id\" is not a string literal: the function is not planned");
      found.complete = false;
      this.#found.push(found);
      return;
    }
    try {
      const plan = { id, ...(format !== undefined ? { format } : {}), ...(timeoutSeconds !== undefined ? { timeoutSeconds } : {}), ...(limits !== undefined ? { limits } : {}), ...(warm !== undefined ? { warm } : {}) } as FunctionPlanOptions;
      const fields = functionRequestFields(plan);
      const labels = (rest["labels"] ?? {}) as Record<string, string>;
      found.request = { ttlSeconds: fields.ttlSeconds, ...rest, labels: { ...labels, ...fields.labels }, function: fields.function };
    } catch (err) {
      this.#report(options, `fn options: ${(err as Error).message}`);
      found.complete = false;
    }
    this.#found.push(found);
  }

  /** `sb.fork()` / `sb.fork({ count: N })`: children started from sb's state when the script runs. */
  #collectForks(node: TS.Node): void {
    const ts = this.#ts;
    if (!ts.isCallExpression(node)) return;
    const found = this.#sandboxOf(node, "fork");
    if (found === undefined) return;
    const arg = node.arguments[0];
    let count: number | undefined = 1;
    if (arg !== undefined) {
      const scratch: Found = { location: found.location, request: {}, commands: [], complete: true, forks: [] };
      const options = this.#value(arg, "fork", scratch);
      const given = options !== null && typeof options === "object" ? (options as { count?: unknown }).count : undefined;
      if (options === NOT_STATIC || !scratch.complete || (given !== undefined && typeof given !== "number")) count = undefined;
      else if (typeof given === "number") count = given;
    }
    found.forks.push({ location: this.#at(node.getStart(this.#sf)), count });
  }

  #collectCommands(node: TS.Node): void {
    const ts = this.#ts;
    if (!ts.isCallExpression(node) || !ts.isPropertyAccessExpression(node.expression)) return;
    const method = node.expression.name.text;
    if (method !== "run" && method !== "start") return;
    const commands = node.expression.expression;
    if (!ts.isPropertyAccessExpression(commands) || commands.name.text !== "commands" || !ts.isIdentifier(commands.expression)) return;
    const found = this.#sandboxVars.get(commands.expression.text);
    if (found === undefined) return;
    const arg = node.arguments[0];
    const value = arg === undefined ? NOT_STATIC : this.#value(arg, "command", found);
    if (typeof value === "string") found.commands.push(["/bin/sh", "-c", value]);
    else if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === "string")) found.commands.push(value as string[]);
    else {
      if (value !== NOT_STATIC) this.#report(arg ?? node, `commands.${method}: the command is not a string or an array of strings`);
      found.complete = false;
    }
  }

  /** An object literal's static properties; others are reported and left out. */
  #object(node: TS.ObjectLiteralExpression, path: string, found: Found, skip?: ReadonlySet<string>): Record<string, unknown> {
    const ts = this.#ts;
    const out: Record<string, unknown> = {};
    for (const prop of node.properties) {
      let key: string | undefined;
      let valueNode: TS.Expression | undefined;
      if (ts.isPropertyAssignment(prop)) {
        if (ts.isIdentifier(prop.name) || ts.isStringLiteral(prop.name) || ts.isNumericLiteral(prop.name)) key = prop.name.text;
        valueNode = prop.initializer;
      } else if (ts.isShorthandPropertyAssignment(prop)) {
        key = prop.name.text;
        valueNode = prop.name;
      }
      if (key === undefined || valueNode === undefined) {
        this.#report(prop, `${path || "options"}: a spread, computed key or method is not static: not read`);
        found.complete = false;
        continue;
      }
      if (skip?.has(key)) continue;
      const value = this.#value(valueNode, path ? `${path}.${key}` : key, found);
      if (value !== NOT_STATIC) out[key] = value;
    }
    return out;
  }

  /** The literal value of `expr`, or NOT_STATIC (reported, and the workload marked incomplete). */
  #value(expr: TS.Expression, path: string, found: Found, depth = 0, at: TS.Node = expr): Value | typeof NOT_STATIC {
    const ts = this.#ts;
    const node = unwrap(ts, expr);
    const fail = (why: string): typeof NOT_STATIC => {
      this.#report(at, `${path}: ${why}: not read`);
      found.complete = false;
      return NOT_STATIC;
    };
    if (depth > 32) return fail("too deeply nested");
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return node.text;
    if (ts.isNumericLiteral(node)) return Number(node.text);
    if (ts.isPrefixUnaryExpression(node) && node.operator === ts.SyntaxKind.MinusToken && ts.isNumericLiteral(node.operand)) return -Number(node.operand.text);
    if (node.kind === ts.SyntaxKind.TrueKeyword) return true;
    if (node.kind === ts.SyntaxKind.FalseKeyword) return false;
    if (node.kind === ts.SyntaxKind.NullKeyword) return null;
    if (ts.isArrayLiteralExpression(node)) {
      const out: Value[] = [];
      for (const [i, el] of node.elements.entries()) {
        if (ts.isSpreadElement(el) || ts.isOmittedExpression(el)) return fail("a spread or hole in an array is not static");
        const v = this.#value(el, `${path}.${i}`, found, depth + 1, at === expr ? el : at);
        if (v === NOT_STATIC) return NOT_STATIC;
        out.push(v);
      }
      return out;
    }
    if (ts.isObjectLiteralExpression(node)) return this.#object(node, path, found);
    if (ts.isIdentifier(node)) {
      if (node.text === "undefined") return undefined;
      const init = this.#consts.get(node.text);
      if (init === undefined || init === null) return fail(`"${node.text}" is not a const bound to a literal in this file`);
      // Problems inside a const are reported where it is used.
      return this.#value(init, path, found, depth + 1, at);
    }
    if (ts.isCallExpression(node)) return this.#builder(node, path, fail);
    return fail(`${ts.SyntaxKind[node.kind]} is not a literal`);
  }

  /** `NetworkPolicy.denyByDefault().allow…(…)…` and `SecretRef.from…(…)`, applied for real to literal arguments. */
  #builder(call: TS.CallExpression, path: string, fail: (why: string) => typeof NOT_STATIC): Value | typeof NOT_STATIC {
    const ts = this.#ts;
    const chain: { name: string; args: TS.NodeArray<TS.Expression> }[] = [];
    let cursor: TS.Expression = call;
    while (ts.isCallExpression(cursor) && ts.isPropertyAccessExpression(cursor.expression)) {
      chain.unshift({ name: cursor.expression.name.text, args: cursor.arguments });
      cursor = cursor.expression.expression;
    }
    const scratch: Found = { location: { line: 0, column: 0 }, request: {}, commands: [], complete: true, forks: [] };
    const args = (list: TS.NodeArray<TS.Expression>): Value[] | undefined => {
      const out = list.map((a, i) => this.#value(a, `${path}(argument ${i + 1})`, scratch));
      return out.includes(NOT_STATIC) ? undefined : out;
    };
    try {
      if (this.#isExport(cursor, "NetworkPolicy") && chain[0]?.name === "denyByDefault" && chain[0].args.length === 0) {
        let policy = NetworkPolicy.denyByDefault();
        for (const step of chain.slice(1)) {
          if (!POLICY_METHODS.has(step.name)) return fail(`NetworkPolicy.${step.name} is not a builder method`);
          const a = args(step.args);
          if (a === undefined) return fail(`the arguments of NetworkPolicy.${step.name} are not literals`);
          policy = (policy[step.name as "allowHttps"] as (...x: unknown[]) => NetworkPolicy).apply(policy, a);
        }
        return policy.toJSON();
      }
      if (this.#isExport(cursor, "SecretRef") && chain.length === 1 && SECRET_FACTORIES.has(chain[0]!.name)) {
        const a = args(chain[0]!.args);
        if (a === undefined) return fail(`the arguments of SecretRef.${chain[0]!.name} are not literals`);
        return (SecretRef[chain[0]!.name as "from"] as (...x: unknown[]) => SecretRef)(...a).toJSON();
      }
    } catch (err) {
      return fail(`the builder refused its arguments (${(err as Error).message})`);
    }
    return fail("a function call is not static");
  }

  /** Schema-checks the request; a field the schema refuses is reported and left out. */
  #finish(found: Found): StaticWorkload {
    const request = { ...found.request };
    for (let i = 0; i < 32; i++) {
      const parsed = CreateSandboxRequest.safeParse(request);
      if (parsed.success) {
        const workload: StaticWorkload = { location: found.location, request: parsed.data, commands: found.commands, complete: found.complete, forks: found.forks };
        if (found.origin !== undefined) workload.origin = found.origin;
        return workload;
      }
      const issue = parsed.error.issues[0]!;
      const field = issue.path[0];
      const unknownKeys = issue.code === "unrecognized_keys" ? (issue as { keys?: string[] }).keys ?? [] : [];
      for (const key of field === undefined ? unknownKeys : [String(field)]) {
        this.#diagnostics.push({ ...found.location, message: `Sandbox.create option "${key}": ${issue.message}: left out` });
        delete request[key];
      }
      found.complete = false;
      if (field === undefined && unknownKeys.length === 0) break;
    }
    return { location: found.location, request: {}, commands: found.commands, complete: false, forks: found.forks };
  }
}

/** Strips parentheses, `as`, `satisfies`, `<T>x` and `x!`. */
function unwrap(ts: typeof TS, expr: TS.Expression): TS.Expression {
  let node = expr;
  for (;;) {
    if (ts.isParenthesizedExpression(node) || ts.isAsExpression(node) || ts.isSatisfiesExpression(node) || ts.isTypeAssertionExpression(node) || ts.isNonNullExpression(node)) {
      node = node.expression;
    } else {
      return node;
    }
  }
}
