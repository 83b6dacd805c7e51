/**
 * Directory transfer on the API: a tree goes in or out of a sandbox as one tar stream (see
 * tar.ts for the format and its bounds). Schemas only; the engine's side is
 * capabilities/files-tree.ts.
 */
import { z } from "zod";
import type { CallOptions } from "./engine-api.js";
import { MAX_TREE_BYTES, MAX_TREE_ENTRIES } from "./tar.js";

const Count = z.int().min(0);

/** What a directory upload did: entries written, and those skipped (links, devices, FIFOs). */
export const TreeWriteResult = z.strictObject({
  files: Count,
  dirs: Count,
  /** Bytes of file contents written. */
  bytes: Count,
  /** Entries not written: symlinks, hard links, devices and FIFOs. */
  skipped: Count,
});
export type TreeWriteResult = z.infer<typeof TreeWriteResult>;

/** Bounds of one directory transfer; each defaults to (and may not exceed) the protocol's maximum. */
export interface TreeOptions extends CallOptions {
  /** Most entries (files, directories, skipped entries). @default 100000 */
  maxEntries?: number;
  /** Most bytes of file contents. @default 68719476736 (64 GiB) */
  maxBytes?: number;
}

/** The limits of a transfer: the caller's, clamped to the protocol's maximum. */
export function treeLimits(options: TreeOptions = {}): { maxEntries: number; maxBytes: number } {
  const pick = (v: number | undefined, max: number): number => (v !== undefined && Number.isSafeInteger(v) && v >= 0 ? Math.min(v, max) : max);
  return { maxEntries: pick(options.maxEntries, MAX_TREE_ENTRIES), maxBytes: pick(options.maxBytes, MAX_TREE_BYTES) };
}
