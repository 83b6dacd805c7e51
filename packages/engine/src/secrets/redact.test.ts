import { test } from "node:test";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import fc from "fast-check";
import { Redactor } from "./redact.js";

async function streamed(r: Redactor, chunks: readonly Buffer[]): Promise<{ out: Buffer; maxHeld: number }> {
  const t = r.transform();
  const out: Buffer[] = [];
  let inBytes = 0;
  let outBytes = 0;
  let maxHeld = 0;
  t.on("data", (c: Buffer) => {
    out.push(c);
    outBytes += c.length;
  });
  const ended = new Promise<void>((resolve, reject) => {
    t.once("end", resolve);
    t.once("error", reject);
  });
  for (const c of chunks) {
    inBytes += c.length;
    await new Promise<void>((resolve, reject) => t.write(c, (err) => (err ? reject(err) : resolve())));
    // Only meaningful when no replacement changed the length so far; the caller uses it that way.
    maxHeld = Math.max(maxHeld, inBytes - outBytes);
  }
  t.end();
  await ended;
  return { out: Buffer.concat(out), maxHeld };
}

test("replaces every occurrence; short secrets are ignored; empty redactor passes through", () => {
  const r = new Redactor([
    { secret: "sk-live-123", replacement: "[A]" },
    { secret: "abc", replacement: "[SHORT]" },
  ]);
  assert.equal(r.empty, false);
  assert.equal(r.redactString("x sk-live-123 y sk-live-123sk-live-123 abc"), "x [A] y [A][A] abc");
  assert.equal(r.redactBuffer(Buffer.from("sk-live-123!")).toString(), "[A]!");
  const untouched = Buffer.from("nothing here");
  assert.equal(r.redactBuffer(untouched), untouched);
  const none = new Redactor([{ secret: "abc", replacement: "x" }]);
  assert.equal(none.empty, true);
  assert.equal(none.redactString("abc"), "abc");
});

test("overlapping secrets: the longest starting at a position wins", () => {
  const r = new Redactor([
    { secret: "token", replacement: "[T]" },
    { secret: "token-extended", replacement: "[TE]" },
    { secret: "extended-tail", replacement: "[X]" },
  ]);
  assert.equal(r.redactString("token-extended-tail token"), "[TE]-tail [T]");
  assert.equal(r.redactString("tok-extended-tail"), "tok-[X]");
});

test("non-ASCII secrets are matched as UTF-8 bytes", async () => {
  const r = new Redactor([{ secret: "pässwörd-✓", replacement: "[P]" }]);
  const text = Buffer.from("a pässwörd-✓ b");
  assert.equal(r.redactString(text.toString()), "a [P] b");
  assert.equal(r.redactBuffer(text).toString(), "a [P] b");
  const chunks = Array.from(text, (byte) => Buffer.from([byte]));
  assert.equal((await streamed(r, chunks)).out.toString(), "a [P] b");
});

test("a secret split across chunks is redacted; a held tail is flushed at end", async () => {
  const r = new Redactor([{ secret: "SECRET-VALUE", replacement: "<redacted>" }]);
  const { out } = await streamed(r, [Buffer.from("one SEC"), Buffer.from("RET-VA"), Buffer.from("LUE two SECRET-")]);
  assert.equal(out.toString(), "one <redacted> two SECRET-");
  const { maxHeld } = await streamed(r, [Buffer.from("xxSECRET-VALU")]);
  assert.ok(maxHeld <= "SECRET-VALUE".length - 1);
});

test("a readable piped through the transform is redacted", async () => {
  const r = new Redactor([{ secret: "hunter22", replacement: "***" }]);
  const parts: Buffer[] = [];
  for await (const c of Readable.from([Buffer.from("pw=hun"), Buffer.from("ter22;")]).pipe(r.transform())) parts.push(c as Buffer);
  assert.equal(Buffer.concat(parts).toString(), "pw=***;");
});

// Secrets from a small alphabet so they overlap and recur; replacements from a disjoint one.
const secretArb = fc.string({ unit: fc.constantFrom("a", "b", "c", "é", "✓"), minLength: 1, maxLength: 10 });
const fillerArb = fc.string({ unit: fc.constantFrom("a", "b", "c", "x", " ", "é", "✓"), maxLength: 30 });

test("property: streaming with any chunking equals redactString of the whole and leaks no secret", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(secretArb, { minLength: 1, maxLength: 4 }),
      fc.array(fc.tuple(fillerArb, fc.nat()), { maxLength: 8 }),
      fillerArb,
      fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 20 }),
      async (secrets, pieces, tail, cuts) => {
        const r = new Redactor(secrets.map((secret, i) => ({ secret, replacement: `<${i}>` })));
        const text = pieces.map(([filler, k]) => filler + (secrets[k % secrets.length] ?? "")).join("") + tail;
        const whole = r.redactString(text);
        const bytes = Buffer.from(text, "utf8");
        assert.equal(r.redactBuffer(bytes).toString("utf8"), whole);
        const chunks: Buffer[] = [];
        for (let at = 0, c = 0; at < bytes.length; c++) {
          const size = cuts[c % cuts.length] ?? 1;
          chunks.push(bytes.subarray(at, at + size));
          at += size;
        }
        const { out } = await streamed(r, chunks);
        assert.equal(out.toString("utf8"), whole);
        for (const s of secrets) if (Buffer.byteLength(s) >= 4) assert.ok(!whole.includes(s), `${JSON.stringify(s)} left in ${JSON.stringify(whole)}`);
      },
    ),
    { numRuns: 300 },
  );
});

test("property: with no match, the transform holds back less than the longest secret", async () => {
  await fc.assert(
    fc.asyncProperty(fc.string({ unit: fc.constantFrom("a", "b"), maxLength: 40 }), fc.integer({ min: 1, max: 5 }), async (text, size) => {
      const secret = "abababq";
      const r = new Redactor([{ secret, replacement: "#" }]);
      const bytes = Buffer.from(text);
      const chunks: Buffer[] = [];
      for (let at = 0; at < bytes.length; at += size) chunks.push(bytes.subarray(at, at + size));
      const { out, maxHeld } = await streamed(r, chunks);
      assert.ok(maxHeld <= secret.length - 1, `held ${maxHeld}`);
      assert.equal(out.toString(), text);
    }),
  );
});

test("every value long enough to be a secret (8 UTF-8 bytes) is redacted, however few characters it has", () => {
  // Three 3-byte characters: 9 bytes, 3 UTF-16 units.
  const r = new Redactor([{ secret: "\u79d8\u5bc6\u5024", replacement: "[S]" }]);
  assert.equal(r.empty, false);
  assert.equal(r.redactString("key=\u79d8\u5bc6\u5024;"), "key=[S];");
});
