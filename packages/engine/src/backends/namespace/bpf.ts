/**
 * A tiny classic-BPF assembler: the subset of instructions a seccomp filter needs, symbolic jump
 * targets, and the encoding the kernel (and bwrap's `--seccomp FD`) takes: an array of
 * `struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }`, 8 bytes each, little-endian.
 */
import { InternalError } from "@mvm/protocol";

/** Opcodes (class | size | mode | op | source) of the instructions this assembler emits. */
export const BpfOp = {
  /** BPF_LD | BPF_W | BPF_ABS: A = 32-bit word at offset k. */
  LoadWord: 0x20,
  /** BPF_ALU | BPF_AND | BPF_K: A &= k. */
  AndK: 0x54,
  /** BPF_JMP | BPF_JA: pc += k. */
  Jump: 0x05,
  /** BPF_JMP | BPF_JEQ | BPF_K: pc += (A == k) ? jt : jf. */
  JumpEq: 0x15,
  /** BPF_JMP | BPF_JGT | BPF_K: pc += (A > k) ? jt : jf (unsigned). */
  JumpGt: 0x25,
  /** BPF_JMP | BPF_JGE | BPF_K: pc += (A >= k) ? jt : jf (unsigned). */
  JumpGe: 0x35,
  /** BPF_JMP | BPF_JSET | BPF_K: pc += (A & k) ? jt : jf. */
  JumpSet: 0x45,
  /** BPF_RET | BPF_K: return k. */
  ReturnK: 0x06,
} as const;

/** The kernel's limit on classic BPF program length (BPF_MAXINSNS). */
export const BPF_MAX_INSTRUCTIONS = 4096;

/** One encoded instruction. */
export interface SockFilter {
  readonly code: number;
  readonly jt: number;
  readonly jf: number;
  readonly k: number;
}

/** A jump target: a label name, or `null` for the next instruction. */
export type Target = string | null;

/** One assembler line. Labels take no space in the output. */
export type Insn =
  | { readonly op: "label"; readonly name: string }
  | { readonly op: "load"; readonly offset: number }
  | { readonly op: "and"; readonly k: number }
  | { readonly op: "jeq" | "jgt" | "jge" | "jset"; readonly k: number; readonly jt: Target; readonly jf: Target }
  | { readonly op: "ja"; readonly target: string }
  | { readonly op: "ret"; readonly k: number };

const CONDITIONAL = { jeq: BpfOp.JumpEq, jgt: BpfOp.JumpGt, jge: BpfOp.JumpGe, jset: BpfOp.JumpSet } as const;

function checkU32(k: number, what: string): void {
  if (!Number.isInteger(k) || k < 0 || k > 0xffff_ffff) throw new InternalError(`Invalid BPF ${what} ${k}: not a 32-bit unsigned integer`);
}

/**
 * Resolves labels and returns the encoded program. Jumps go forward only (classic BPF has no
 * backward jumps); a conditional jump reaches at most 255 instructions ahead. The last
 * instruction must be a return.
 */
export function assemble(program: readonly Insn[]): SockFilter[] {
  const labels = new Map<string, number>();
  let index = 0;
  for (const insn of program) {
    if (insn.op === "label") {
      if (labels.has(insn.name)) throw new InternalError(`Duplicate BPF label "${insn.name}"`);
      labels.set(insn.name, index);
    } else {
      index++;
    }
  }
  const length = index;
  if (length === 0 || length > BPF_MAX_INSTRUCTIONS) throw new InternalError(`Invalid BPF program length ${length}`);

  const offsetTo = (target: Target, at: number, max: number): number => {
    if (target === null) return 0;
    const dest = labels.get(target);
    if (dest === undefined) throw new InternalError(`Undefined BPF label "${target}"`);
    const offset = dest - at - 1;
    if (offset < 0) throw new InternalError(`BPF jump to "${target}" goes backwards`);
    if (offset > max) throw new InternalError(`BPF jump to "${target}" is ${offset} instructions away (at most ${max})`);
    if (dest >= length) throw new InternalError(`BPF label "${target}" is past the last instruction`);
    return offset;
  };

  const out: SockFilter[] = [];
  for (const insn of program) {
    const at = out.length;
    switch (insn.op) {
      case "label":
        break;
      case "load":
        if (!Number.isInteger(insn.offset) || insn.offset < 0 || insn.offset % 4 !== 0) {
          throw new InternalError(`Invalid BPF load offset ${insn.offset}`);
        }
        out.push({ code: BpfOp.LoadWord, jt: 0, jf: 0, k: insn.offset });
        break;
      case "and":
        checkU32(insn.k, "constant");
        out.push({ code: BpfOp.AndK, jt: 0, jf: 0, k: insn.k });
        break;
      case "jeq":
      case "jgt":
      case "jge":
      case "jset":
        checkU32(insn.k, "constant");
        out.push({ code: CONDITIONAL[insn.op], jt: offsetTo(insn.jt, at, 255), jf: offsetTo(insn.jf, at, 255), k: insn.k });
        break;
      case "ja":
        out.push({ code: BpfOp.Jump, jt: 0, jf: 0, k: offsetTo(insn.target, at, 0xffff_ffff) });
        break;
      case "ret":
        checkU32(insn.k, "return value");
        out.push({ code: BpfOp.ReturnK, jt: 0, jf: 0, k: insn.k });
        break;
    }
  }
  if (out[out.length - 1]?.code !== BpfOp.ReturnK) throw new InternalError("Invalid BPF program: it must end with a return");
  return out;
}

/** Encodes instructions as the raw `struct sock_filter[]` bytes (little-endian, 8 bytes each). */
export function encode(filters: readonly SockFilter[]): Buffer {
  const buf = Buffer.alloc(filters.length * 8);
  filters.forEach((f, i) => {
    buf.writeUInt16LE(f.code, i * 8);
    buf.writeUInt8(f.jt, i * 8 + 2);
    buf.writeUInt8(f.jf, i * 8 + 3);
    buf.writeUInt32LE(f.k, i * 8 + 4);
  });
  return buf;
}

/** Decodes raw `struct sock_filter[]` bytes; the inverse of `encode`. */
export function decode(bytes: Uint8Array): SockFilter[] {
  if (bytes.length % 8 !== 0) throw new InternalError(`Invalid BPF program size ${bytes.length}: not a multiple of 8`);
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: SockFilter[] = [];
  for (let i = 0; i < buf.length; i += 8) {
    out.push({ code: buf.readUInt16LE(i), jt: buf.readUInt8(i + 2), jf: buf.readUInt8(i + 3), k: buf.readUInt32LE(i + 4) });
  }
  return out;
}
