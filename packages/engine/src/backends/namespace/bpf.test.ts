import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { BPF_MAX_INSTRUCTIONS, BpfOp, assemble, decode, encode, type Insn } from "./bpf.js";
import { runSeccompFilter } from "./_bpf-emulator.js";

test("encode writes struct sock_filter little-endian, 8 bytes per instruction", () => {
  const bytes = encode([
    { code: BpfOp.LoadWord, jt: 0, jf: 0, k: 4 },
    { code: BpfOp.JumpEq, jt: 1, jf: 2, k: 0xc000003e },
    { code: BpfOp.ReturnK, jt: 0, jf: 0, k: 0x7fff0000 },
  ]);
  assert.equal(
    bytes.toString("hex"),
    ["2000" + "00" + "00" + "04000000", "1500" + "01" + "02" + "3e0000c0", "0600" + "00" + "00" + "0000ff7f"].join(""),
  );
});

test("decode is the inverse of encode", () => {
  const insn = fc.record({
    code: fc.integer({ min: 0, max: 0xffff }),
    jt: fc.integer({ min: 0, max: 255 }),
    jf: fc.integer({ min: 0, max: 255 }),
    k: fc.integer({ min: 0, max: 0xffff_ffff }),
  });
  fc.assert(fc.property(fc.array(insn, { maxLength: 64 }), (program) => assert.deepEqual(decode(encode(program)), program.map((i) => ({ ...i })))));
  assert.throws(() => decode(new Uint8Array(12)), /not a multiple of 8/);
});

test("assemble resolves labels to forward offsets and null to the next instruction", () => {
  const program: Insn[] = [
    { op: "load", offset: 0 },
    { op: "jeq", k: 7, jt: "yes", jf: null },
    { op: "jset", k: 1, jt: null, jf: "no" },
    { op: "ja", target: "yes" },
    { op: "label", name: "no" },
    { op: "ret", k: 0 },
    { op: "label", name: "yes" },
    { op: "ret", k: 1 },
  ];
  const out = assemble(program);
  assert.equal(out.length, 6);
  assert.deepEqual(out[1], { code: BpfOp.JumpEq, jt: 3, jf: 0, k: 7 });
  assert.deepEqual(out[2], { code: BpfOp.JumpSet, jt: 0, jf: 1, k: 1 });
  assert.deepEqual(out[3], { code: BpfOp.Jump, jt: 0, jf: 0, k: 1 });
  assert.equal(runSeccompFilter(out, { nr: 7, arch: 0 }), 1);
  assert.equal(runSeccompFilter(out, { nr: 6, arch: 0 }), 0);
  assert.equal(runSeccompFilter(out, { nr: 9, arch: 0 }), 1);
});

test("assemble rejects jumps the kernel could not encode or would refuse", () => {
  const ret: Insn = { op: "ret", k: 0 };
  assert.throws(() => assemble([{ op: "label", name: "a" }, ret, { op: "ja", target: "a" }, ret]), /backwards/);
  assert.throws(() => assemble([{ op: "jeq", k: 1, jt: "nowhere", jf: null }, ret]), /Undefined BPF label "nowhere"/);
  assert.throws(() => assemble([{ op: "label", name: "x" }, { op: "label", name: "x" }, ret]), /Duplicate/);
  assert.throws(() => assemble([{ op: "load", offset: 0 }]), /must end with a return/);
  assert.throws(() => assemble([{ op: "load", offset: 2 }, ret]), /load offset 2/);
  assert.throws(() => assemble([{ op: "ret", k: 2 ** 32 }]), /not a 32-bit unsigned integer/);
  assert.throws(() => assemble([]), /length 0/);
  assert.throws(() => assemble(Array.from({ length: BPF_MAX_INSTRUCTIONS + 1 }, () => ret)), /length 4097/);

  const far = (gap: number): Insn[] => [
    { op: "jeq", k: 1, jt: "end", jf: null },
    ...Array.from({ length: gap }, () => ret),
    { op: "label", name: "end" },
    ret,
  ];
  assert.equal(assemble(far(255))[0]?.jt, 255);
  assert.throws(() => assemble(far(256)), /256 instructions away \(at most 255\)/);
});
