/**
 * Test helper: runs a classic-BPF seccomp program (the instruction subset bpf.ts emits) over a
 * seccomp_data record, the way the kernel would, so the filter can be checked against an
 * independent statement of the policy.
 */
import { BpfOp, type SockFilter } from "./bpf.js";

export interface SeccompInput {
  readonly nr: number;
  readonly arch: number;
  /** Up to six 64-bit arguments. */
  readonly args?: readonly bigint[];
}

/** Builds the 64-byte struct seccomp_data (little-endian). */
export function seccompData(input: SeccompInput): Buffer {
  const buf = Buffer.alloc(64);
  buf.writeUInt32LE(input.nr >>> 0, 0);
  buf.writeUInt32LE(input.arch >>> 0, 4);
  (input.args ?? []).forEach((arg, i) => buf.writeBigUInt64LE(BigInt.asUintN(64, arg), 16 + 8 * i));
  return buf;
}

/** Returns the filter's 32-bit verdict for `input`; throws on anything the kernel would reject. */
export function runSeccompFilter(program: readonly SockFilter[], input: SeccompInput): number {
  const data = seccompData(input);
  let a = 0;
  let pc = 0;
  for (let steps = 0; steps <= program.length; steps++) {
    const insn = program[pc];
    if (insn === undefined) throw new Error(`pc ${pc} ran off the end of the program`);
    const next = (taken: boolean): number => pc + 1 + (taken ? insn.jt : insn.jf);
    switch (insn.code) {
      case BpfOp.LoadWord:
        if (insn.k + 4 > data.length) throw new Error(`load at ${insn.k} is outside seccomp_data`);
        a = data.readUInt32LE(insn.k);
        pc++;
        break;
      case BpfOp.AndK:
        a = (a & insn.k) >>> 0;
        pc++;
        break;
      case BpfOp.Jump:
        pc = pc + 1 + insn.k;
        break;
      case BpfOp.JumpEq:
        pc = next(a === insn.k);
        break;
      case BpfOp.JumpGt:
        pc = next(a > insn.k);
        break;
      case BpfOp.JumpGe:
        pc = next(a >= insn.k);
        break;
      case BpfOp.JumpSet:
        pc = next((a & insn.k) !== 0);
        break;
      case BpfOp.ReturnK:
        return insn.k >>> 0;
      default:
        throw new Error(`unknown opcode 0x${insn.code.toString(16)} at ${pc}`);
    }
  }
  throw new Error("program did not return");
}
