import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  AbortedError,
  AdmissionError,
  AlreadyExistsError,
  CleanupError,
  CommandExitError,
  ERROR_CODES,
  ErrorCode,
  InternalError,
  InvalidArgumentError,
  MvmError,
  NotFoundError,
  PermissionDeniedError,
  PolicyDeniedError,
  SnapshotMismatchError,
  SandboxCrashedError,
  SandboxPausedError,
  FunctionError,
  TimeoutError,
  TransportError,
  UnsupportedCapabilityError,
  fromWire,
  isErrorCode,
  toMvmError,
  type WireError,
} from "./errors.js";

/** The class each code must map to. A Record, so a new code without an entry fails to compile. */
const EXPECTED: Record<ErrorCode, abstract new (...args: never[]) => MvmError> = {
  POLICY_DENIED: PolicyDeniedError,
  ADMISSION_FAILED: AdmissionError,
  COMMAND_EXIT: CommandExitError,
  TIMEOUT: TimeoutError,
  TRANSPORT: TransportError,
  CLEANUP_FAILED: CleanupError,
  SNAPSHOT_MISMATCH: SnapshotMismatchError,
  SANDBOX_CRASHED: SandboxCrashedError,
  SANDBOX_PAUSED: SandboxPausedError,
  UNSUPPORTED_CAPABILITY: UnsupportedCapabilityError,
  NOT_FOUND: NotFoundError,
  INVALID_ARGUMENT: InvalidArgumentError,
  PERMISSION_DENIED: PermissionDeniedError,
  ALREADY_EXISTS: AlreadyExistsError,
  ABORTED: AbortedError,
  INTERNAL: InternalError,
  FUNCTION_FAILED: FunctionError,
};

describe("error registry", () => {
  it("lists every code once", () => {
    assert.deepEqual([...ERROR_CODES].sort(), Object.keys(EXPECTED).sort());
    assert.equal(new Set(ERROR_CODES).size, ERROR_CODES.length);
    assert.deepEqual(ERROR_CODES, Object.values(ErrorCode));
  });

  it("recognizes codes and nothing else", () => {
    for (const code of ERROR_CODES) assert.ok(isErrorCode(code));
    for (const v of ["not_found", "", "ENOENT", 1, null, undefined, {}]) assert.ok(!isErrorCode(v), String(v));
  });

  for (const code of ERROR_CODES) {
    it(`round-trips ${code} through toWire and fromWire`, () => {
      const wire: WireError = { code, message: `Sample "${code}" failure`, hint: "do something" };
      const err = fromWire(wire);
      assert.ok(err instanceof EXPECTED[code], `${code} became ${err.name}`);
      assert.ok(err instanceof MvmError && err instanceof Error);
      assert.equal(err.code, code);
      assert.equal(err.name, EXPECTED[code].name);
      assert.equal(err.message, wire.message);
      assert.equal(err.hint, "do something");
      const again = fromWire(err.toWire());
      assert.equal(again.constructor, err.constructor);
      assert.equal(again.code, code);
      assert.equal(again.message, err.message);
      assert.equal(again.hint, err.hint);
    });
  }

  it("gives each class the code of the registry", () => {
    for (const code of ERROR_CODES) {
      if (code === ErrorCode.CommandExit) continue;
      const Cls = EXPECTED[code] as unknown as new (message: string, options?: { cause?: unknown; hint?: string }) => MvmError;
      const cause = new Error("root");
      const err = new Cls("m", { cause });
      assert.equal(err.code, code);
      assert.equal(err.cause, cause);
      assert.equal(err.hint, undefined);
    }
  });

  it("never puts the cause on the wire and omits an absent hint", () => {
    const err = new NotFoundError('Sandbox "sbx_x" not found', { cause: new Error("secret detail") });
    assert.deepEqual(err.toWire(), { code: "NOT_FOUND", message: 'Sandbox "sbx_x" not found' });
    assert.ok(!("hint" in err.toWire()));
  });

  it("passes a cause given to fromWire", () => {
    const cause = new Error("socket reset");
    assert.equal(fromWire({ code: "TRANSPORT", message: "m" }, cause).cause, cause);
    assert.equal(fromWire({ code: "TRANSPORT", message: "m" }).cause, undefined);
  });

  it("turns an unknown code into InternalError", () => {
    const err = fromWire({ code: "FROM_THE_FUTURE" as ErrorCode, message: "m" });
    assert.ok(err instanceof InternalError);
    assert.equal(err.code, "INTERNAL");
    assert.equal(err.message, "m");
  });
});

describe("CommandExitError", () => {
  const result = { exitCode: 3, signal: null, stdout: "out", stderr: "err", timedOut: false };

  it("carries its result, on the wire too", () => {
    const err = new CommandExitError("Command exited with code 3", result, { hint: "check stderr" });
    assert.equal(err.result, result);
    assert.equal(err.code, "COMMAND_EXIT");
    assert.deepEqual(err.toWire(), { code: "COMMAND_EXIT", message: "Command exited with code 3", hint: "check stderr", details: result });
  });

  it("is rebuilt with its result by fromWire", () => {
    const wire = JSON.parse(JSON.stringify(new CommandExitError("failed", result).toWire())) as WireError;
    const err = fromWire(wire);
    assert.ok(err instanceof CommandExitError);
    assert.deepEqual(err.result, result);
  });
});

describe("toMvmError", () => {
  it("passes MvmErrors through unchanged", () => {
    const err = new TimeoutError("late");
    assert.equal(toMvmError(err), err);
  });

  it("wraps anything else, keeping the cause", () => {
    const plain = new Error("boom");
    const wrapped = toMvmError(plain);
    assert.ok(wrapped instanceof InternalError);
    assert.equal(wrapped.message, "boom");
    assert.equal(wrapped.cause, plain);
    const fromString = toMvmError("text", TransportError);
    assert.ok(fromString instanceof TransportError);
    assert.equal(fromString.message, "text");
    assert.equal(fromString.cause, "text");
  });
});
