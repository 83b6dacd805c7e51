/**
 * The host secret store: one JSON file per secret in a 0700 directory, each file 0600 and owned
 * by the engine's user. Values are only ever returned by `get`; metadata never carries them.
 *
 * File `<dir>/<name>.json`: `{"version":1,"name","value","hosts":[...],"createdAt","updatedAt"}`.
 */
import { randomBytes } from "node:crypto";
import { constants as fsc } from "node:fs";
import { lstat, mkdir, open, readdir, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import {
  AdmissionError,
  InvalidArgumentError,
  MAX_SECRET_REF_HOSTS,
  MAX_SECRET_VALUE_BYTES,
  SECRET_NAME_PATTERN,
  hostPatternProblem,
  type SecretMeta,
} from "@mvm/protocol";
import { fsyncDir } from "../store/atomic.js";

/** What the store tells about a secret (name, hosts, bytes, createdAt, updatedAt). Never its value. */
export type { SecretMeta };

// A value may be JSON-escaped up to 6 bytes per byte (\u0001); hosts and times add a little.
const MAX_FILE_BYTES = MAX_SECRET_VALUE_BYTES * 6 + 64 * 1024;
// Temp files younger than this may belong to a `set` still running in another process.
const STALE_TEMP_MS = 60_000;
const TEMP_FILE = /^\.([a-z0-9][a-z0-9._-]{0,127})\.[0-9a-f]{16}\.tmp$/;

const SecretFileSchema = z.strictObject({
  version: z.literal(1),
  name: z.string().regex(SECRET_NAME_PATTERN),
  value: z.string(),
  hosts: z.array(z.string().refine((h) => hostPatternProblem(h) === undefined, "must be a host pattern")).max(MAX_SECRET_REF_HOSTS),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
type SecretFile = z.infer<typeof SecretFileSchema>;

/** Why `value` is not a usable secret value, or undefined when it is. Never quotes the value. */
export function secretValueProblem(value: string): string | undefined {
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes < 1 || bytes > MAX_SECRET_VALUE_BYTES) return `value must be 1 to ${MAX_SECRET_VALUE_BYTES} bytes (got ${bytes})`;
  if (value.includes("\0")) return "value must not contain NUL";
  if (/^[\r\n]|[\r\n]$/.test(value)) return "value must not start or end with a newline";
  if (Buffer.from(value, "utf8").toString("utf8") !== value) return "value must be valid UTF-8 (no lone surrogates)";
  return undefined;
}

/** Drops one trailing "\n" (or "\r\n"), as left by `echo` or a pipe. */
export function trimOneNewline(value: string): string {
  if (value.endsWith("\r\n")) return value.slice(0, -2);
  if (value.endsWith("\n")) return value.slice(0, -1);
  return value;
}

function checkName(name: string, action: string): void {
  if (!SECRET_NAME_PATTERN.test(name)) {
    throw new InvalidArgumentError(
      `Cannot ${action} secret ${JSON.stringify(name)}: name must be 1 to 128 of [a-z0-9._-], starting with [a-z0-9]`,
    );
  }
}

function checkHosts(name: string, hosts: readonly string[]): string[] {
  const unique = [...new Set(hosts)];
  if (unique.length > MAX_SECRET_REF_HOSTS) {
    throw new InvalidArgumentError(`Cannot set secret ${JSON.stringify(name)}: at most ${MAX_SECRET_REF_HOSTS} hosts (got ${unique.length})`);
  }
  for (const host of unique) {
    const problem = hostPatternProblem(host);
    if (problem !== undefined) {
      throw new InvalidArgumentError(`Cannot set secret ${JSON.stringify(name)}: host ${JSON.stringify(host)} ${problem}`);
    }
  }
  return unique;
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

function metaOf(file: SecretFile): SecretMeta {
  return {
    name: file.name,
    hosts: [...file.hosts],
    bytes: Buffer.byteLength(file.value, "utf8"),
    createdAt: file.createdAt,
    updatedAt: file.updatedAt,
  };
}

/**
 * Secrets kept by the host, one file each under `dir` (e.g. `<stateRoot>/secrets`).
 *
 * @example
 * const store = new SecretStore(join(stateRoot, "secrets"));
 * await store.set("openai-key", "sk-...", { hosts: ["api.openai.com"] });
 */
export class SecretStore {
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** The directory holding the secret files. */
  get dir(): string {
    return this.#dir;
  }

  /**
   * Create or replace secret `name`. One trailing newline of `value` is dropped. A replaced
   * secret keeps its `createdAt`. The write is atomic: readers see the old or the new file.
   */
  async set(name: string, value: string, options: { hosts?: readonly string[] } = {}): Promise<SecretMeta> {
    checkName(name, "set");
    const trimmed = trimOneNewline(value);
    const problem = secretValueProblem(trimmed);
    if (problem !== undefined) throw new InvalidArgumentError(`Cannot set secret ${JSON.stringify(name)}: ${problem}`);
    const hosts = checkHosts(name, options.hosts ?? []);
    await this.#ensureDir();
    await this.#removeStaleTemps();
    const previous = await this.#read(name);
    const now = new Date().toISOString();
    const file: SecretFile = { version: 1, name, value: trimmed, hosts, createdAt: previous?.createdAt ?? now, updatedAt: now };
    await this.#writeAtomic(name, `${JSON.stringify(file)}\n`);
    return metaOf(file);
  }

  /** The value and metadata of secret `name`, or undefined when there is none. */
  async get(name: string): Promise<{ value: string; meta: SecretMeta } | undefined> {
    checkName(name, "read");
    try {
      await this.#checkDir();
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined;
      throw err;
    }
    const file = await this.#read(name);
    return file === undefined ? undefined : { value: file.value, meta: metaOf(file) };
  }

  /** Metadata of every secret, sorted by name. Leftover temp files are skipped (and cleaned). */
  async list(): Promise<SecretMeta[]> {
    let entries: string[];
    try {
      await this.#checkDir();
      entries = await readdir(this.#dir);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return [];
      throw err;
    }
    await this.#removeStaleTemps(entries);
    const names = entries
      .filter((e) => e.endsWith(".json"))
      .map((e) => e.slice(0, -".json".length))
      .filter((n) => SECRET_NAME_PATTERN.test(n))
      .sort();
    const metas: SecretMeta[] = [];
    for (const name of names) {
      const file = await this.#read(name);
      if (file !== undefined) metas.push(metaOf(file));
    }
    return metas;
  }

  /** Delete secret `name`. Resolves false when there was none. */
  async remove(name: string): Promise<boolean> {
    checkName(name, "remove");
    try {
      await this.#checkDir();
      await unlink(this.#path(name));
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
    await fsyncDir(this.#dir);
    return true;
  }

  #path(name: string): string {
    return join(this.#dir, `${name}.json`);
  }

  async #ensureDir(): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await this.#checkDir();
  }

  /** The directory must be a real directory of ours that nobody else can list or enter. */
  async #checkDir(): Promise<void> {
    const st = await lstat(this.#dir);
    const where = `secret store ${JSON.stringify(this.#dir)}`;
    if (!st.isDirectory()) throw new AdmissionError(`Cannot use ${where}: not a directory (symlinks are refused)`);
    if (st.uid !== process.getuid?.()) throw new AdmissionError(`Cannot use ${where}: owned by uid ${st.uid}, not by this user`);
    if ((st.mode & 0o077) !== 0) {
      throw new AdmissionError(`Cannot use ${where}: mode ${(st.mode & 0o777).toString(8)} lets group or others in`, {
        hint: `chmod 700 ${JSON.stringify(this.#dir)}`,
      });
    }
  }

  /** Reads and checks one secret file; undefined when it does not exist. */
  async #read(name: string): Promise<SecretFile | undefined> {
    const path = this.#path(name);
    const what = `secret ${JSON.stringify(name)}: file ${JSON.stringify(path)}`;
    let handle;
    try {
      handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined;
      if (isErrno(err, "ELOOP")) throw new AdmissionError(`Cannot use ${what} is a symlink`, { cause: err });
      throw err;
    }
    let raw: Buffer;
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new AdmissionError(`Cannot use ${what} is not a regular file`);
      if (st.uid !== process.getuid?.()) throw new AdmissionError(`Cannot use ${what} is owned by uid ${st.uid}, not by this user`);
      if ((st.mode & 0o077) !== 0) {
        throw new AdmissionError(`Cannot use ${what} has mode ${(st.mode & 0o777).toString(8)}, readable by group or others`, {
          hint: `chmod 600 ${JSON.stringify(path)} (and rotate the secret if others may have read it)`,
        });
      }
      if (st.size > MAX_FILE_BYTES) throw new AdmissionError(`Cannot use ${what} is larger than ${MAX_FILE_BYTES} bytes`);
      const buf = Buffer.alloc(MAX_FILE_BYTES + 1);
      let filled = 0;
      while (filled < buf.length) {
        const { bytesRead } = await handle.read(buf, filled, buf.length - filled, filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      if (filled > MAX_FILE_BYTES) throw new AdmissionError(`Cannot use ${what} is larger than ${MAX_FILE_BYTES} bytes`);
      raw = buf.subarray(0, filled);
    } finally {
      await handle.close();
    }
    let json: unknown;
    try {
      json = JSON.parse(raw.toString("utf8"));
    } catch {
      // The parser's message quotes the file's text, which holds the value: keep it out of the error.
      throw new AdmissionError(`Cannot use ${what} is not valid JSON`, { cause: new SyntaxError("invalid JSON in secret file") });
    }
    const parsed = SecretFileSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const field = issue?.path.map(String).join(".") ?? "";
      throw new AdmissionError(`Cannot use ${what} is not a valid secret file: field "${field}" ${issue?.message ?? "invalid"}`, {
        cause: parsed.error,
      });
    }
    if (parsed.data.name !== name) throw new AdmissionError(`Cannot use ${what} names secret ${JSON.stringify(parsed.data.name)}`);
    const problem = secretValueProblem(parsed.data.value);
    if (problem !== undefined) throw new AdmissionError(`Cannot use ${what}: ${problem}`);
    return parsed.data;
  }

  async #writeAtomic(name: string, text: string): Promise<void> {
    const temp = join(this.#dir, `.${name}.${randomBytes(8).toString("hex")}.tmp`);
    const handle = await open(temp, "wx", 0o600);
    try {
      try {
        await handle.chmod(0o600);
        await handle.writeFile(text, "utf8");
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, this.#path(name));
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw err;
    }
    await fsyncDir(this.#dir);
  }

  /** Deletes temp files left by a `set` that died between create and rename. */
  async #removeStaleTemps(entries?: readonly string[]): Promise<void> {
    const names = entries ?? (await readdir(this.#dir));
    const cutoffMs = Date.now() - STALE_TEMP_MS;
    for (const entry of names) {
      if (!TEMP_FILE.test(entry)) continue;
      const path = join(this.#dir, entry);
      try {
        const st = await lstat(path);
        if (st.mtimeMs < cutoffMs) await unlink(path);
      } catch (err) {
        if (!isErrno(err, "ENOENT")) throw err;
      }
    }
  }
}
