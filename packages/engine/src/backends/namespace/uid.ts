/**
 * Host uids for sandboxes when the engine runs as root: each sandbox runs as its own
 * unprivileged uid (and the same gid), drawn from 0x70000000 + 24 random bits, never one that
 * /etc/passwd, /etc/group, /etc/subuid or /etc/subgid mentions, one this engine handed out, or
 * one a live process uses.
 */
import { randomInt } from "node:crypto";
import { readFile } from "node:fs/promises";
import { InternalError } from "@mvm/protocol";
import { listProcessesWithId } from "../../_internal/proc.js";

export const SANDBOX_UID_BASE = 0x7000_0000;
export const SANDBOX_UID_SPAN = 1 << 24;

/** What the allocator consults; injectable for tests. */
export interface UidSources {
  /** Texts of /etc/passwd and /etc/group (colon files: id in the third field). */
  readonly idFiles: () => Promise<readonly string[]>;
  /** Texts of /etc/subuid and /etc/subgid (name:start:count). */
  readonly rangeFiles: () => Promise<readonly string[]>;
  /** True when a live process uses `id` as a uid or gid. */
  readonly inUse: (id: number) => Promise<boolean>;
  /** Random integer in [0, n). */
  readonly random: (n: number) => number;
}

async function readOptional(path: string): Promise<string> {
  return readFile(path, "utf8").catch(() => "");
}

export const hostUidSources: UidSources = {
  idFiles: async () => Promise.all([readOptional("/etc/passwd"), readOptional("/etc/group")]),
  rangeFiles: async () => Promise.all([readOptional("/etc/subuid"), readOptional("/etc/subgid")]),
  inUse: async (id) => (await listProcessesWithId(id)).length > 0,
  random: (n) => randomInt(n),
};

/** Ids named in the third field of passwd/group-style files. */
export function namedIds(texts: readonly string[]): Set<number> {
  const ids = new Set<number>();
  for (const text of texts) {
    for (const line of text.split("\n")) {
      const field = line.split(":")[2];
      if (field !== undefined && /^\d+$/.test(field)) ids.add(Number(field));
    }
  }
  return ids;
}

/** [start, end) ranges from subuid/subgid-style files. */
export function subordinateRanges(texts: readonly string[]): Array<readonly [number, number]> {
  const ranges: Array<readonly [number, number]> = [];
  for (const text of texts) {
    for (const line of text.split("\n")) {
      const [, start, count] = line.split(":");
      if (start !== undefined && count !== undefined && /^\d+$/.test(start) && /^\d+$/.test(count.trim())) {
        ranges.push([Number(start), Number(start) + Number(count.trim())]);
      }
    }
  }
  return ranges;
}

export class SandboxUidAllocator {
  private readonly held = new Set<number>();

  constructor(private readonly sources: UidSources = hostUidSources) {}

  /** Picks a free uid (also used as the gid) and holds it until `release`. */
  async allocate(): Promise<number> {
    const named = namedIds(await this.sources.idFiles());
    const ranges = subordinateRanges(await this.sources.rangeFiles());
    for (let attempt = 0; attempt < 32; attempt++) {
      const id = SANDBOX_UID_BASE + this.sources.random(SANDBOX_UID_SPAN);
      if (this.held.has(id) || named.has(id) || ranges.some(([start, end]) => id >= start && id < end)) continue;
      this.held.add(id); // held before the async check so a concurrent allocate cannot pick it too
      if (await this.sources.inUse(id)) {
        this.held.delete(id);
        continue;
      }
      return id;
    }
    throw new InternalError(`Cannot find a free sandbox uid in [${SANDBOX_UID_BASE}, ${SANDBOX_UID_BASE + SANDBOX_UID_SPAN})`);
  }

  release(id: number): void {
    this.held.delete(id);
  }
}
