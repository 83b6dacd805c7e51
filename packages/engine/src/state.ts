/**
 * On-disk state of an engine: where it lives, and the per-sandbox record a later engine uses to
 * reap what a crashed one left behind.
 */
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { SandboxInfo } from "@mvm/protocol";
import { isSameLiveProcess } from "./_internal/proc.js";
import { writeFileAtomic } from "./store/atomic.js";

export { readProcStartTime as processStartTime } from "./_internal/proc.js";

/** Root of the engine's state: images, agent runtimes, sandbox records. */
export function defaultStateDir(): string {
  const fromEnv = process.env["MVM_STATE_DIR"];
  if (fromEnv) return fromEnv;
  if (process.getuid?.() === 0) return "/var/lib/mvm";
  const xdg = process.env["XDG_DATA_HOME"];
  return join(xdg && xdg.startsWith("/") ? xdg : join(homedir(), ".local", "share"), "mvm");
}

export const ReapRecordSchema = z.strictObject({
  backend: z.enum(["namespace", "vm"]),
  pid: z.number().int().min(1),
  pidStartTime: z.string().max(32),
  cgroups: z.array(z.string().max(4096)).max(16),
  extra: z.record(z.string().max(64), z.string().max(4096)),
});

export const SandboxRecordSchema = z.strictObject({
  version: z.literal(1),
  owner: z.strictObject({ pid: z.number().int().min(1), startTime: z.string().max(32) }),
  info: SandboxInfo,
  reap: ReapRecordSchema.optional(),
});
export type SandboxRecord = z.infer<typeof SandboxRecordSchema>;

export function isAlive(owner: { pid: number; startTime: string }): Promise<boolean> {
  return isSameLiveProcess(owner.pid, owner.startTime);
}

export class SandboxRecords {
  readonly dir: string;
  constructor(stateDir: string) {
    this.dir = join(stateDir, "sandboxes");
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  sandboxDir(id: string): string {
    return join(this.dir, id);
  }

  async create(id: string): Promise<string> {
    const dir = this.sandboxDir(id);
    await mkdir(dir, { mode: 0o700 });
    return dir;
  }

  async write(record: SandboxRecord): Promise<void> {
    await writeFileAtomic(join(this.sandboxDir(record.info.id), "record.json"), JSON.stringify(record), 0o600);
  }

  async remove(id: string): Promise<void> {
    await rm(this.sandboxDir(id), { recursive: true, force: true });
  }

  /** Every sandbox directory with its record (undefined when missing or unreadable). */
  async scan(): Promise<{ id: string; record: SandboxRecord | undefined }[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out: { id: string; record: SandboxRecord | undefined }[] = [];
    for (const id of names) {
      let record: SandboxRecord | undefined;
      try {
        const raw = await readFile(join(this.dir, id, "record.json"), "utf8");
        const r = SandboxRecordSchema.safeParse(JSON.parse(raw));
        record = r.success ? r.data : undefined;
      } catch {
        record = undefined;
      }
      out.push({ id, record });
    }
    return out;
  }
}
