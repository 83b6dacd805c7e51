/**
 * Facts the engine derives from host files at start (a file's sha256, the libraries `ldd` lists,
 * the outcome of a trial sandbox) kept between processes, each with the identity of every file it
 * was derived from: device, inode, size, modification and change times in nanoseconds. A fact is
 * reused only while every one of those files still has that identity and its context (kernel
 * release, boot, uid, settings: whatever else it depends on) is the same string; otherwise it is
 * computed again. A change time cannot be set back by a process short of changing the clock, so a
 * replaced or rewritten file is always seen.
 *
 * One JSON file, written atomically, read strictly; a damaged or foreign file is ignored and
 * rewritten. It lives in the engine's state directory, which only the engine's user may write.
 */
import { mkdir, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { parseJsonStrict } from "@mvm/protocol";
import { z } from "zod";
import { readSmallFile, writeFileAtomic } from "./atomic.js";

/** What names one version of a file: equal identities mean unchanged content. */
export type FileIdentity = string;

/** `dev:ino:size:mtimeNs:ctimeNs` of `path` (symlinks followed), or "missing". */
export async function fileIdentity(path: string): Promise<FileIdentity> {
  try {
    const st = await stat(path, { bigint: true });
    if (!st.isFile()) return "not-a-file";
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  } catch {
    return "missing";
  }
}

const MAX_FILE_BYTES = 1024 * 1024;
const MAX_ENTRIES = 512;

const Entry = z.strictObject({
  context: z.string().max(4096),
  files: z.array(z.tuple([z.string().max(4096), z.string().max(200)])).max(256),
  value: z.unknown(),
});
const FactsFile = z.strictObject({ version: z.literal(1), facts: z.record(z.string().max(4096), Entry) });
type Entry = z.infer<typeof Entry>;

export interface FactOptions<T> {
  /** Which fact (e.g. `sha256:/usr/bin/node`). */
  readonly key: string;
  /** Everything else the fact depends on, as one string (kernel release, boot id, uid, ...). */
  readonly context?: string;
  /** Checks a reused value; a value that fails is computed again. */
  readonly schema: z.ZodType<T>;
  /**
   * Computes the fact and names the files it was derived from (their identities are taken before
   * `compute` runs for `files`, after it for `discovered`, and the fact is kept only when the
   * files named up front did not change while it ran).
   */
  readonly files: readonly string[];
  readonly compute: () => Promise<{ value: T; discovered?: readonly string[] }>;
  /** Whether a computed value may be kept (e.g. only a success). @default every value */
  readonly keep?: (value: T) => boolean;
}

/**
 * The cache. `fact()` is safe to call concurrently; concurrent engines sharing the file may each
 * compute a fact once and the last writer's file stays, which is only a lost cache entry.
 * @example
 * const facts = new HostFacts("/var/lib/mvm/runtime/host-facts.json");
 * const sum = await facts.fact({ key: "sha256:/usr/bin/node", files: ["/usr/bin/node"], schema: z.string(), compute: async () => ({ value: await sha256("/usr/bin/node") }) });
 */
export class HostFacts {
  readonly #path: string;
  #loaded: Promise<Map<string, Entry>> | undefined;
  #saving: Promise<void> = Promise.resolve();
  #dirty = false;

  constructor(path: string) {
    this.#path = path;
  }

  #load(): Promise<Map<string, Entry>> {
    this.#loaded ??= (async () => {
      try {
        const parsed = FactsFile.safeParse(parseJsonStrict((await readSmallFile(this.#path, MAX_FILE_BYTES)).toString("utf8")));
        return parsed.success ? new Map(Object.entries(parsed.data.facts)) : new Map();
      } catch {
        return new Map();
      }
    })();
    return this.#loaded;
  }

  /** The fact, reused when its files and context are unchanged, else computed (and kept). */
  async fact<T>(options: FactOptions<T>): Promise<T> {
    const facts = await this.#load();
    const context = options.context ?? "";
    const known = facts.get(options.key);
    if (known !== undefined && known.context === context && (await unchanged(known.files))) {
      const value = options.schema.safeParse(known.value);
      if (value.success) return value.data;
    }
    const before = await Promise.all(options.files.map(async (f) => [f, await fileIdentity(f)] as [string, string]));
    const { value, discovered = [] } = await options.compute();
    const after = await Promise.all(options.files.map(fileIdentity));
    if (after.some((id, i) => id !== before[i]![1]) || options.keep?.(value) === false) return value;
    const found = await Promise.all(discovered.map(async (f) => [f, await fileIdentity(f)] as [string, string]));
    facts.set(options.key, { context, files: [...before, ...found], value });
    while (facts.size > MAX_ENTRIES) facts.delete(facts.keys().next().value as string);
    this.#dirty = true;
    await this.#save();
    return value;
  }

  /** Writes the facts once the writes queued before this one are done. Failing to write only loses the cache. */
  #save(): Promise<void> {
    this.#saving = this.#saving.then(async () => {
      if (!this.#dirty) return;
      this.#dirty = false;
      const facts = await this.#load();
      const body = JSON.stringify({ version: 1, facts: Object.fromEntries(facts) });
      try {
        await mkdir(dirname(this.#path), { recursive: true, mode: 0o755 });
        await writeFileAtomic(this.#path, body, 0o644);
      } catch {
        // a read-only or full state directory: the facts are computed again next time
      }
    });
    return this.#saving;
  }
}

async function unchanged(files: readonly (readonly [string, string])[]): Promise<boolean> {
  const now = await Promise.all(files.map(([f]) => fileIdentity(f)));
  return now.every((id, i) => id === files[i]![1] && id !== "missing");
}
