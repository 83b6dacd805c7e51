import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ExitCode, exitCodeOf, signalNumber } from "./exit-code.js";

const CASES: { exit: { exitCode: number | null; signal: string | null; timedOut: boolean }; code: number }[] = [
  { exit: { exitCode: 0, signal: null, timedOut: false }, code: 0 },
  { exit: { exitCode: 7, signal: null, timedOut: false }, code: 7 },
  { exit: { exitCode: 255, signal: null, timedOut: false }, code: 255 },
  { exit: { exitCode: null, signal: "SIGKILL", timedOut: false }, code: 137 },
  { exit: { exitCode: null, signal: "SIGTERM", timedOut: false }, code: 143 },
  { exit: { exitCode: null, signal: "SIGINT", timedOut: false }, code: 130 },
  { exit: { exitCode: null, signal: "SIGKILL", timedOut: true }, code: 124 },
  { exit: { exitCode: 0, signal: null, timedOut: true }, code: 124 },
  // Reports that fit no case never map to success.
  { exit: { exitCode: 256, signal: null, timedOut: false }, code: 1 },
  { exit: { exitCode: -1, signal: null, timedOut: false }, code: 1 },
  { exit: { exitCode: null, signal: "SIGBOGUS", timedOut: false }, code: 1 },
  { exit: { exitCode: null, signal: "constructor", timedOut: false }, code: 1 },
  { exit: { exitCode: null, signal: null, timedOut: false }, code: 1 },
];

for (const c of CASES) {
  test(`exit code of ${JSON.stringify(c.exit)} is ${c.code}`, () => {
    assert.equal(exitCodeOf(c.exit), c.code);
  });
}

test("signal numbers follow the host's table", () => {
  assert.equal(signalNumber("SIGKILL"), 9);
  assert.equal(signalNumber("SIGHUP"), 1);
  assert.equal(signalNumber("__proto__"), undefined);
  assert.equal(signalNumber("SIGNOPE"), undefined);
});

test("every report maps into 0..255, and to 0 only for a clean exit 0", () => {
  fc.assert(
    fc.property(
      fc.record({
        exitCode: fc.oneof(fc.constant(null), fc.integer({ min: -1000, max: 1000 }), fc.double()),
        signal: fc.oneof(fc.constant(null), fc.constantFrom("SIGKILL", "SIGTERM", "SIGSEGV"), fc.string({ maxLength: 16 })),
        timedOut: fc.boolean(),
      }),
      (exit) => {
        const code = exitCodeOf(exit);
        assert.ok(Number.isInteger(code) && code >= 0 && code <= 255);
        if (code === ExitCode.Ok) assert.ok(exit.exitCode === 0 && !exit.timedOut);
      },
    ),
  );
});
