import { randomBytes } from "node:crypto";
import type { SandboxId } from "@mvm/protocol";

const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

/** A fresh sandbox id: `sbx_` + 20 base32 characters (100 random bits). */
export function newSandboxId(): SandboxId {
  const bytes = randomBytes(20);
  let s = "sbx_";
  for (const b of bytes) s += ALPHABET[b & 31];
  return s as SandboxId;
}
