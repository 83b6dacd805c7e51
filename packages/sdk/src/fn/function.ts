/**
 * `fn(options, impl)`: a function that runs in sandboxes. `remote(...args)` runs one call in a
 * fresh sandbox (or one claimed from a warm pool) that is destroyed after it; `map` fans calls
 * out; `session()` keeps one sandbox for several calls. See docs/FUNCTIONS.md.
 */
import {
  DEFAULT_FN_LIMITS,
  FN_MODE_ENV,
  STRICT_SECRETS_ENV,
  checkFnLimits,
  checkFunctionId,
  checkSecretArgNames,
  envFlagOn,
  fnLimitsFromEnv,
  InvalidArgumentError,
  type CallOptions,
  type EngineApi,
  type WarmPoolInfo,
  type FnFormat,
  type FnLimits,
  type FnMode,
  type FunctionSpec,
  type ProcessInfo,
  MAX_WARM_POOL_SIZE,
} from "@mvm/protocol";
import { sharedEngine } from "../connect.js";
import { Sandbox, requestOf, type SandboxCreateOptions } from "../sandbox.js";
import { bundleFunction, type FunctionBundle } from "./bundle.js";
import { invokeIn, prestartedWrapper, type InvokeSettings } from "./invoke.js";

/** Options of {@link fn}. */
export interface FunctionOptions extends Omit<SandboxCreateOptions, "command" | "intent" | "plan" | "fromSnapshot" | "timeoutMs" | "signal" | "function"> {
  /** The function's id: `^[a-z][a-z0-9-]{0,62}$`. Names its pool, its operator log and its plans. */
  id: string;
  /** Wall-clock limit of one call, in seconds; past it the call's process group is killed. @default 60 (MVM_FN_INVOKE_TIMEOUT_SEC) */
  timeoutSeconds?: number;
  /** Payload format of arguments and results. @default "json" */
  format?: FnFormat;
  /**
   * "production" gives callers `{ kind, errorId, message }` only (the stack goes to the operator
   * log); "development" adds the stack to FunctionError. @default MVM_FN_MODE, else "production"
   */
  errorMode?: FnMode;
  /** Payload limits, each at most its default unless MVM_FN_* raises it. */
  limits?: Partial<Pick<FnLimits, "maxInputBytes" | "maxOutputBytes" | "maxDepth">>;
  /** Packages the function may require; each is bundled with it from `resolveDir`. @default [] */
  dependencies?: string[];
  /** Where `dependencies` are resolved. @default process.cwd() */
  resolveDir?: string;
  /**
   * Sandboxes the engine keeps started for this function's workload (a warm pool, docs/POOLS.md),
   * 0 to 16. A call's create then claims a ready one; each serves one call or session. @default 0
   */
  warm?: number;
  /** Receives the function's stdout. @default written to this process's stdout */
  onStdout?: (chunk: string) => unknown;
  /** Receives the function's stderr. @default written to this process's stderr */
  onStderr?: (chunk: string) => unknown;
  /** Receives warnings (secret-looking argument names). @default process.emitWarning */
  onWarning?: (message: string) => void;
  /** Operator log directory. @default fnLogDir() */
  logDir?: string;
}

/** Options of one call or session. */
export interface FunctionCallOptions extends CallOptions {
  /** The engine to run it on, instead of the function's own (its `engine` option, else the shared one). */
  engine?: EngineApi;
  /** Receives the function's stdout for this call, instead of the function's `onStdout`. */
  onStdout?: (chunk: string) => unknown;
  /** Receives the function's stderr for this call, instead of the function's `onStderr`. */
  onStderr?: (chunk: string) => unknown;
}

/** Options of {@link MvmFunction.map}. */
export interface MapOptions extends CallOptions {
  /** Calls in flight at once, 1 to 256. @default 8 */
  concurrency?: number;
}

type Impl = (...args: never[]) => unknown;

/** The options of a function that decide its limits and its sandboxes' plan. */
export type FunctionPlanOptions = Pick<FunctionOptions, "id" | "format" | "timeoutSeconds" | "limits" | "warm">;

/** A function's effective limits: the defaults, MVM_FN_* in `env`, then its options. */
export function functionLimits(options: FunctionPlanOptions, env: Readonly<Record<string, string | undefined>> = process.env): FnLimits {
  return checkFnLimits({
    ...fnLimitsFromEnv(env, DEFAULT_FN_LIMITS),
    ...options.limits,
    ...(options.timeoutSeconds !== undefined ? { invokeTimeoutMs: Math.round(options.timeoutSeconds * 1000) } : {}),
  });
}

/**
 * What a function adds to its sandboxes' create request: the function spec (id, wrapper format,
 * limits) its plan records, its label, and the default TTL (long enough for one call). Used by
 * fn() and by static plan mode alike.
 */
export function functionRequestFields(options: FunctionPlanOptions, limits: FnLimits = functionLimits(options)): { function: FunctionSpec; ttlSeconds: number; labels: Record<string, string> } {
  const { maxInputBytes, maxOutputBytes, maxDepth, invokeTimeoutMs } = limits;
  const callSeconds = Math.ceil(invokeTimeoutMs / 1000) + 60;
  return {
    function: { id: options.id, format: options.format ?? "json", limits: { maxInputBytes, maxOutputBytes, maxDepth, invokeTimeoutMs } },
    ttlSeconds: callSeconds,
    labels: { "fn.id": options.id },
  };
}

/** A function defined with {@link fn}. */
export class MvmFunction<A extends unknown[] = unknown[], R = unknown> {
  /** The function id. */
  readonly id: string;
  readonly format: FnFormat;
  readonly mode: FnMode;
  readonly limits: FnLimits;
  readonly warm: number;
  /** The bundled code shipped to sandboxes. */
  readonly bundle: FunctionBundle;
  readonly #options: FunctionOptions;
  readonly #strict: boolean;
  readonly #warn: (message: string) => void;
  /** The warm pool, set once per engine. */
  readonly #pools = new WeakMap<EngineApi, Promise<WarmPoolInfo>>();
  /** Sandboxes of finished calls being destroyed (a call answers before its sandbox's kill ends). */
  readonly #disposing = new Set<Promise<void>>();

  /** @internal Use {@link fn}. */
  constructor(options: FunctionOptions, impl: Impl) {
    this.id = checkFunctionId(options.id);
    if (options.format !== undefined && options.format !== "json" && options.format !== "msgpack") {
      throw new InvalidArgumentError(`Invalid format "${String(options.format)}" of function "${this.id}": expected "json" or "msgpack"`);
    }
    this.format = options.format ?? "json";
    const envMode = process.env[FN_MODE_ENV];
    this.mode = options.errorMode ?? (envMode === "development" ? "development" : "production");
    if (this.mode !== "production" && this.mode !== "development") throw new InvalidArgumentError(`Invalid mode "${String(this.mode)}" of function "${this.id}"`);
    this.limits = functionLimits(options);
    const warm = options.warm ?? 0;
    if (!Number.isInteger(warm) || warm < 0 || warm > MAX_WARM_POOL_SIZE) {
      throw new InvalidArgumentError(`Invalid warm ${String(warm)} of function "${this.id}": expected an integer from 0 to ${MAX_WARM_POOL_SIZE}`);
    }
    this.warm = warm;
    this.#options = options;
    this.#strict = options.strictSecrets === true || envFlagOn(process.env[STRICT_SECRETS_ENV]);
    this.#warn = options.onWarning ?? ((m) => process.emitWarning(m, { code: "MVM_SECRET_ARGUMENT" }));
    this.bundle = bundleFunction(this.id, impl, {
      ...(options.dependencies ? { dependencies: options.dependencies } : {}),
      ...(options.resolveDir ? { resolveDir: options.resolveDir } : {}),
    });
    checkSecretArgNames(this.id, this.bundle.parameterNames, this.#strict, this.#warn);
  }

  /** What the host needs to run one call. */
  get #settings(): InvokeSettings {
    return {
      id: this.id,
      bundle: this.bundle,
      format: this.format,
      mode: this.mode,
      limits: this.limits,
      onStdout: this.#options.onStdout ?? ((c) => void process.stdout.write(c)),
      onStderr: this.#options.onStderr ?? ((c) => void process.stderr.write(c)),
      logDir: this.#options.logDir,
    };
  }

  /** The create options of this function's sandboxes. */
  sandboxOptions(): SandboxCreateOptions {
    const {
      id: _id, timeoutSeconds: _t, format: _f, errorMode: _m, limits: _l, dependencies: _d, resolveDir: _r, warm: _w,
      onStdout: _o, onStderr: _e, onWarning: _n, logDir: _g, ...rest
    } = this.#options;
    const fields = functionRequestFields(this.#options, this.limits);
    return { ttlSeconds: fields.ttlSeconds, ...rest, labels: { ...(rest.labels ?? {}), ...fields.labels }, function: fields.function };
  }

  /** Warns about (or, strict, refuses) arguments whose names look like secrets. */
  #checkArgs(args: readonly unknown[]): void {
    const names: string[] = [];
    for (const a of args) {
      if (a !== null && typeof a === "object" && !Array.isArray(a) && !(a instanceof Uint8Array)) names.push(...Object.keys(a));
    }
    checkSecretArgNames(this.id, names, this.#strict, this.#warn);
  }

  async #newSandbox(call: FunctionCallOptions): Promise<Sandbox> {
    const opts = this.sandboxOptions();
    return Sandbox.create({
      ...opts,
      ...(call.engine ? { engine: call.engine } : {}),
      timeoutMs: this.limits.sessionStartTimeoutMs,
      ...(call.signal ? { signal: call.signal } : {}),
    });
  }

  /**
   * Sets this function's warm pool on its engine (once per engine) and resolves when `warm`
   * sandboxes are ready, when the pool reports a failed start, or when `timeoutMs` passes.
   * @example await add.warmUp(); // the next add.remote() claims a started sandbox
   */
  async warmUp(options: { timeoutMs?: number; engine?: EngineApi } = {}): Promise<WarmPoolInfo> {
    const engine = options.engine ?? (await sharedEngine(this.#options));
    const set = await this.#setPool(engine);
    const deadline = Date.now() + (options.timeoutMs ?? this.limits.sessionStartTimeoutMs);
    for (;;) {
      const info = (await engine.listWarmPools()).find((p) => p.id === set.id);
      if (!info) throw new InvalidArgumentError(`The warm pool of function "${this.id}" was removed`);
      if (info.ready >= info.size || Date.now() >= deadline || info.lastError !== undefined) return info;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /**
   * Removes this function's warm pool from its engine (its ready sandboxes are stopped), and
   * waits until the sandboxes of finished calls are destroyed ({@link settled}).
   */
  async coolDown(options: { engine?: EngineApi } = {}): Promise<void> {
    const engine = options.engine ?? (await sharedEngine(this.#options));
    this.#pools.delete(engine);
    await engine.setWarmPool({ sandbox: requestOf(this.sandboxOptions()), size: 0 });
    await this.settled();
  }

  /**
   * Resolves when the sandbox of every call that has answered is destroyed. A call answers as
   * soon as its result is read and verified; its sandbox's kill (already asked for) ends after.
   * @example await add.remote(2, 3); await add.settled(); // no sandbox of add runs now
   */
  async settled(): Promise<void> {
    while (this.#disposing.size > 0) await Promise.all([...this.#disposing]);
  }

  /** Sets the pool of this function's workload to `warm` sandboxes, once per engine. */
  #setPool(engine: EngineApi): Promise<WarmPoolInfo> {
    let pending = this.#pools.get(engine);
    if (!pending) {
      pending = engine.setWarmPool({ sandbox: requestOf(this.sandboxOptions()), size: this.warm });
      pending.catch(() => this.#pools.delete(engine));
      this.#pools.set(engine, pending);
    }
    return pending;
  }

  /**
   * A sandbox for one call or session. With `warm`, the pool is set first; the create then claims a
   * ready sandbox of it (the engine matches the workload), or starts one when none is ready.
   */
  async #acquire(call: FunctionCallOptions): Promise<Sandbox> {
    if (this.warm > 0) await this.#setPool(call.engine ?? (await sharedEngine(this.#options)));
    return this.#newSandbox(call);
  }

  async #dispose(sb: Sandbox): Promise<void> {
    await sb.kill({ timeoutMs: this.limits.sessionStopTimeoutMs }).catch(() => undefined);
  }

  /**
   * Runs one call in a sandbox of its own, destroyed afterwards.
   * @throws FunctionError when the function throws, times out or breaks a limit (`kind`, `errorId`);
   *   InvalidArgumentError when the arguments cannot be sent; PolicyDeniedError for a
   *   secret-looking argument name under MVM_STRICT_SECRETS=1
   * @example
   * const add = fn({ id: "add", image: "debian:bookworm+python3" }, async (a: number, b: number) => a + b);
   * await add.remote(2, 3); // 5
   */
  async remote(...args: A): Promise<Awaited<R>> {
    return this.call(args);
  }

  /** {@link remote} with an explicit argument list, cancellation, and optionally another engine. */
  async call(args: A, options: FunctionCallOptions = {}): Promise<Awaited<R>> {
    return this.#call(args, options);
  }

  /** One call; `disposing` gets the destruction of its sandbox, which ends after the answer. */
  async #call(args: A, options: FunctionCallOptions, disposing?: (done: Promise<void>) => void): Promise<Awaited<R>> {
    let sb: Sandbox;
    try {
      this.#checkArgs(args);
      sb = await this.#acquire(options);
    } catch (err) {
      disposing?.(Promise.resolve()); // no sandbox to destroy
      throw err;
    }
    try {
      const settings = {
        ...this.#settings,
        ...(options.onStdout ? { onStdout: options.onStdout } : {}),
        ...(options.onStderr ? { onStderr: options.onStderr } : {}),
      };
      const call: CallOptions = options.signal ? { signal: options.signal } : {};
      // A sandbox of this function's pool has the wrapper waiting already (only before its first call).
      const prestarted = this.warm > 0 ? await prestartedWrapper(sb, call) : undefined;
      return (await invokeIn(sb, settings, args, {}, { ...call, disposable: true, ...(prestarted !== undefined ? { prestarted } : {}) })) as Awaited<R>;
    } finally {
      // The kill is asked for now and ends after the answer; settled() waits for it.
      const disposed = this.#dispose(sb);
      this.#disposing.add(disposed);
      void disposed.finally(() => this.#disposing.delete(disposed));
      disposing?.(disposed);
    }
  }

  /**
   * Runs one call per item of `argsList`, each in its own sandbox, up to `concurrency` at once,
   * and yields the results in the order of `argsList`. The first failure (in that order) is
   * thrown; calls still running are then abandoned and their sandboxes destroyed.
   * @example for await (const sum of add.map([[1, 2], [3, 4]], { concurrency: 8 })) console.log(sum);
   */
  async *map(argsList: Iterable<A>, options: MapOptions = {}): AsyncGenerator<Awaited<R>, void, undefined> {
    const concurrency = options.concurrency ?? 8;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) {
      throw new InvalidArgumentError(`Invalid concurrency ${String(concurrency)}: expected an integer from 1 to 256`);
    }
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    const items = [...argsList];
    const results: Promise<Awaited<R>>[] = new Array(items.length);
    let next = 0;
    // Slots still running (a call answers before its slot frees, so settled ones must not stay in the race).
    const slots = new Set<Promise<void>>();
    const start = (): void => {
      const i = next++;
      if (i >= items.length) return;
      // A slot is free once the call's sandbox is destroyed: at most `concurrency` sandboxes at once.
      let done!: (d: Promise<void>) => void;
      const disposed = new Promise<Promise<void>>((resolve) => (done = resolve));
      const p = this.#call(items[i]!, { signal }, done);
      results[i] = p;
      const slot: Promise<void> = disposed.then(
        () => void (slots.delete(slot), start()),
        () => void (slots.delete(slot), start()),
      );
      slots.add(slot);
      void p.catch(() => undefined); // observed in order below
    };
    try {
      for (let k = 0; k < Math.min(concurrency, items.length); k++) start();
      for (let i = 0; i < items.length; i++) {
        while (results[i] === undefined) await Promise.race([...slots]);
        yield await results[i]!;
      }
    } finally {
      controller.abort();
      await Promise.allSettled(results.filter((p) => p !== undefined));
    }
  }

  /**
   * Starts one sandbox for several calls; dispose the session to destroy it.
   * @example
   * await using s = await add.session();
   * await s.remote(1, 2); await s.remote(3, 4);
   */
  async session(options: FunctionCallOptions = {}): Promise<FunctionSession<A, R>> {
    const sb = await this.#acquire(options);
    // Looked for before any call ran in the sandbox; the session's first call takes it.
    const prestarted = this.warm > 0 ? await prestartedWrapper(sb, options.signal ? { signal: options.signal } : {}).catch(() => undefined) : undefined;
    return new FunctionSession<A, R>(sb, this.#settings, (a) => this.#checkArgs(a), () => this.#dispose(sb), prestarted);
  }

  /** What the sandbox's plan records of this function: id, wrapper format and limits. */
  spec(): FunctionSpec {
    return functionRequestFields(this, this.limits).function;
  }

  /** What plans record of this function: id, wrapper format and limits. */
  describe(): { id: string; format: FnFormat; mode: FnMode; limits: FnLimits; warm: number; bundleSha256: string } {
    return { id: this.id, format: this.format, mode: this.mode, limits: this.limits, warm: this.warm, bundleSha256: this.bundle.sha256 };
  }
}

/** Several calls of one function in one sandbox. Each call is still a fresh process. */
export class FunctionSession<A extends unknown[] = unknown[], R = unknown> implements AsyncDisposable {
  #closed: Promise<void> | undefined;

  /** @internal Built by MvmFunction.session. */
  constructor(
    /** The session's sandbox. */
    readonly sandbox: Sandbox,
    private readonly settings: InvokeSettings,
    private readonly checkArgs: (args: readonly unknown[]) => void,
    private readonly stop: () => Promise<void>,
    /** The wrapper the engine pre-started in the sandbox (a warm pool's), for the first call only. */
    private prestarted?: ProcessInfo,
  ) {}

  /** Calls the function in the session's sandbox. */
  async remote(...args: A): Promise<Awaited<R>> {
    return this.call(args);
  }

  /** {@link remote} with an explicit argument list and cancellation. */
  async call(args: A, options: CallOptions = {}): Promise<Awaited<R>> {
    if (this.#closed) throw new InvalidArgumentError(`The session of function "${this.settings.id}" is closed`);
    this.checkArgs(args);
    // Taken before the call starts: only the first call of the session may use it.
    const prestarted = this.prestarted;
    this.prestarted = undefined;
    return (await invokeIn(this.sandbox, this.settings, args, {}, { ...options, ...(prestarted !== undefined ? { prestarted } : {}) })) as Awaited<R>;
  }

  /** Destroys the sandbox (single-flight). */
  close(): Promise<void> {
    return (this.#closed ??= this.stop());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Defines a function that runs in sandboxes. Its source is bundled now, with the packages in
 * `dependencies`: a function that uses names from the code around it is refused here
 * (FunctionDefinitionError), not when it is called.
 * @example
 * const add = fn({ id: "add", image: "debian:bookworm+python3", timeoutSeconds: 60, network: NetworkPolicy.denyByDefault() },
 *   async (a: number, b: number) => a + b);
 * await add.remote(2, 3); // 5
 */
export function fn<F extends (...args: never[]) => unknown>(options: FunctionOptions, impl: F): MvmFunction<Parameters<F>, ReturnType<F>> {
  return new MvmFunction<Parameters<F>, ReturnType<F>>(options, impl);
}
