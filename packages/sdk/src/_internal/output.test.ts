import { test } from "node:test";
import assert from "node:assert/strict";
import { OutputBuffer } from "./output.js";

test("keeps bytes up to the cap and marks the rest truncated", () => {
  const out = new OutputBuffer(5);
  out.push(Buffer.from("abc"));
  out.push(Buffer.from("defgh"));
  out.push(Buffer.from("ij"));
  out.end();
  assert.equal(out.text(), "abcde");
  assert.equal(out.bytes, 5);
  assert.equal(out.truncated, true);
});

test("a character split across chunks is decoded whole", () => {
  const seen: string[] = [];
  const out = new OutputBuffer(100, (s) => seen.push(s));
  const euro = Buffer.from("€"); // 3 bytes
  out.push(euro.subarray(0, 1));
  out.push(euro.subarray(1, 2));
  out.push(Buffer.concat([euro.subarray(2), Buffer.from("!")]));
  out.end();
  assert.deepEqual(seen, ["€!"]);
  assert.equal(out.text(), "€!");
});

test("a character cut by the cap or the end becomes U+FFFD", () => {
  const out = new OutputBuffer(2);
  out.push(Buffer.from("a€"));
  out.end();
  assert.equal(out.text(), "a\ufffd");
});

test("iterators replay from the start and follow until the end", async () => {
  const out = new OutputBuffer(100);
  out.push(Buffer.from("one "));
  const early = out.chunks();
  const first = await early.next();
  assert.equal(first.value, "one ");
  const pending = early.next();
  out.push(Buffer.from("two"));
  assert.equal((await pending).value, "two");
  out.end();
  assert.equal((await early.next()).done, true);
  const late: string[] = [];
  for await (const c of out.chunks()) late.push(c);
  assert.deepEqual(late, ["one ", "two"]);
});

test("nothing is kept after the end", () => {
  const out = new OutputBuffer(100);
  out.end();
  out.push(Buffer.from("late"));
  assert.equal(out.text(), "");
});
