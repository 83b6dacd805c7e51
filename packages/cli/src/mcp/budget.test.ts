/**
 * Output budgets: what fits is kept whole; what does not keeps its head and tail within the
 * budget and says how many bytes were cut; characters are never split.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { BudgetedText } from "./budget.js";

const NOTE = /\n\[mvm: (\d+) of (\d+) bytes of out cut here to fit the output budget\]\n/;

test("output within the budget is kept whole; beyond it, head and tail within the budget and the cut counted", () => {
  fc.assert(
    fc.property(fc.array(fc.string({ unit: "grapheme", maxLength: 300 }), { maxLength: 40 }), fc.integer({ min: 16, max: 2000 }), (chunks, budget) => {
      const b = new BudgetedText(budget);
      for (const c of chunks) b.push(c);
      const whole = chunks.join("");
      const total = Buffer.byteLength(whole);
      const out = b.text("out");
      assert.equal(b.totalBytes, total);
      if (total <= budget) return assert.equal(out, whole);
      const m = NOTE.exec(out);
      assert.ok(m, out);
      assert.equal(Number(m[2]), total);
      const [head, tail] = [out.slice(0, m.index), out.slice(m.index + m[0].length)];
      assert.ok(whole.startsWith(head) && whole.endsWith(tail));
      assert.ok(Buffer.byteLength(head) + Buffer.byteLength(tail) <= budget);
      assert.equal(Buffer.byteLength(head) + Buffer.byteLength(tail) + Number(m[1]), total);
      assert.ok(!out.includes("\uFFFD") || whole.includes("\uFFFD"));
    }),
  );
});

test("memory stays near the budget however much is pushed", () => {
  const b = new BudgetedText(1000);
  for (let i = 0; i < 10_000; i++) b.push(`line ${i} ${"x".repeat(50)}\n`);
  const out = b.text("out");
  assert.ok(out.length < 1200);
  assert.match(out, /line 9999 x+\n$/);
  assert.match(out, /^line 0 /);
});
