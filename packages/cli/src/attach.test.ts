/** The detach keys of `attach -it` (Ctrl-P Ctrl-Q), split across any chunking of the input. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { DETACH_KEYS, DetachKeys } from "./attach.js";

/** Feeds `chunks` in order; what passed and whether (and where) the keys were typed. */
function feedAll(chunks: readonly Uint8Array[]): { passed: number[]; detach: boolean } {
  const keys = new DetachKeys();
  const passed: number[] = [];
  for (const chunk of chunks) {
    const { pass, detach } = keys.feed(chunk);
    passed.push(...pass);
    if (detach) return { passed, detach };
  }
  return { passed, detach: false };
}

/** Splits `bytes` at `cuts` (positions, any order). */
function split(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(from, c));
    from = c;
  }
  return out;
}

describe("attach detach keys", () => {
  it("Ctrl-P Ctrl-Q detaches; the bytes before it pass, the keys themselves do not", () => {
    assert.deepEqual(feedAll([Buffer.from("ls\r\x10\x11rest")]), { passed: [...Buffer.from("ls\r")], detach: true });
    assert.deepEqual(feedAll([Buffer.from("a\x10"), Buffer.from("\x11")]), { passed: [0x61], detach: true });
  });

  it("a Ctrl-P not followed by Ctrl-Q is passed on with the next byte; one at the end is held", () => {
    assert.deepEqual(feedAll([Buffer.from("\x10x\x10\x10")]), { passed: [0x10, 0x78, 0x10], detach: false });
  });

  it("input without the key pair passes unchanged, however it is chunked (a last Ctrl-P held)", () => {
    const noPair = fc.uint8Array({ maxLength: 64 }).filter((b) => !Buffer.from(b).includes(Buffer.from(DETACH_KEYS)));
    fc.assert(
      fc.property(noPair, fc.array(fc.nat(), { maxLength: 8 }), (bytes, cuts) => {
        const { passed, detach } = feedAll(split(bytes, cuts));
        assert.equal(detach, false);
        const expected = [...bytes];
        if (expected.at(-1) === DETACH_KEYS[0]) expected.pop();
        assert.deepEqual(passed, expected);
      }),
    );
  });

  it("with the pair anywhere, exactly the bytes before its first occurrence pass, however chunked", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 32 }), fc.uint8Array({ maxLength: 32 }), fc.array(fc.nat(), { maxLength: 8 }), (before, after, cuts) => {
        const all = Buffer.concat([before, Buffer.from(DETACH_KEYS), after]);
        const first = all.indexOf(Buffer.from(DETACH_KEYS));
        const { passed, detach } = feedAll(split(all, cuts));
        assert.equal(detach, true);
        assert.deepEqual(passed, [...all.subarray(0, first)]);
      }),
    );
  });
});
