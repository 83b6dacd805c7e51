/** Files in a sandbox: read, write (audited with the content's digest), list, stat, mkdir, remove, rename. */
import { createHash } from "node:crypto";
import {
  InvalidArgumentError,
  MAX_DIR_ENTRIES,
  TransportError,
  type AuditReceiptRef,
  type CallOptions,
  type DirListingResult,
  type FileInfo,
  type FileReadStream,
  type WriteFileOptions,
} from "@mvm/protocol";
import { sha256Hex } from "../audit/entry.js";
import { checkPath, liveSandbox, receiptFor, type EngineCore } from "./core.js";

export async function readFile(core: EngineCore, id: string, path: string): Promise<FileReadStream> {
  return liveSandbox(core, id).readFile(checkPath(path));
}

export async function writeFile(core: EngineCore, 
  id: string,
  path: string,
  data: Uint8Array | AsyncIterable<Uint8Array>,
  options: WriteFileOptions = {},
): Promise<{ bytes: number; receipt?: AuditReceiptRef }> {
  const mode = options.mode ?? 0o644;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new InvalidArgumentError(`Invalid file mode: ${JSON.stringify(mode)}`);
  const sandbox = liveSandbox(core, id);
  const target = checkPath(path);
  const hash = createHash("sha256");
  const hashed = data instanceof Uint8Array ? (hash.update(data), data) : hashing(data, hash);
  const { bytes } = await sandbox.writeFile(target, hashed, { ...options, mode, createParents: options.createParents ?? true });
  const entry = await core.gate.record({
    type: "file.written",
    sandboxId: id,
    pathDigest: sha256Hex(target),
    sizeBytes: bytes,
    contentSha256: hash.digest("hex"),
  });
  const receipt = receiptFor(sandbox.info, entry);
  return { bytes, ...(receipt ? { receipt } : {}) };
}

/** Pages through the directory (the agent answers in pages that fit one control message). */
export async function listDir(core: EngineCore, id: string, path: string, options: CallOptions = {}): Promise<DirListingResult> {
  const sandbox = liveSandbox(core, id);
  const dir = checkPath(path);
  const entries: FileInfo[] = [];
  for (;;) {
    const last = entries.at(-1);
    const page = await sandbox.call("listDir", last ? { path: dir, after: last.name } : { path: dir }, options);
    if (last && page.entries.some((e) => Buffer.compare(Buffer.from(e.name), Buffer.from(last.name)) <= 0)) {
      throw new TransportError(`Agent of "${id}" answered listDir out of order`);
    }
    entries.push(...page.entries);
    if (!page.truncated || page.entries.length === 0) return { entries, truncated: page.truncated };
    if (entries.length >= MAX_DIR_ENTRIES) return { entries: entries.slice(0, MAX_DIR_ENTRIES), truncated: true };
  }
}
export async function stat(core: EngineCore, id: string, path: string, options: CallOptions = {}): Promise<FileInfo> {
  return liveSandbox(core, id).call("stat", { path: checkPath(path) }, options);
}
export async function mkdir(core: EngineCore, id: string, path: string, recursive: boolean, options: CallOptions = {}): Promise<void> {
  await liveSandbox(core, id).call("mkdir", { path: checkPath(path), recursive }, options);
}
export async function remove(core: EngineCore, id: string, path: string, recursive: boolean, options: CallOptions = {}): Promise<void> {
  await liveSandbox(core, id).call("remove", { path: checkPath(path), recursive }, options);
}
export async function rename(core: EngineCore, id: string, from: string, to: string, options: CallOptions = {}): Promise<void> {
  await liveSandbox(core, id).call("rename", { from: checkPath(from), to: checkPath(to) }, options);
}


/** Passes chunks through while feeding them to `hash`. */
async function* hashing(source: AsyncIterable<Uint8Array>, hash: ReturnType<typeof createHash>): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    hash.update(chunk);
    yield chunk;
  }
}
