/**
 * Temporary directories for tests, all under one per-process root that is removed when the
 * test process exits.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

let root: string | undefined;

/** A fresh empty directory, removed with the others at process exit. */
export function scratchDir(prefix: string): string {
  if (root === undefined) {
    const created = mkdtempSync(join(tmpdir(), "mvmctl-test-"));
    root = created;
    process.once("exit", () => rmSync(created, { recursive: true, force: true }));
  }
  return mkdtempSync(join(root, `${prefix}-`));
}
