/**
 * API keys of the E2B-compatible server. The operator makes them with `mvmctl apikey create`; the
 * store keeps only each key's SHA-256, in `<state>/e2b/apikeys.json` (mode 0600, directory 0700).
 * A request's key is hashed and compared in constant time with every stored hash.
 * The same directory holds the server's access-token secret (see accessTokenFor).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { InvalidArgumentError, NotFoundError, parseJsonStrict } from "@mvm/protocol";

/** Most keys the store holds. */
export const MAX_API_KEYS = 256;
/** Largest key file read, in bytes. */
const MAX_STORE_BYTES = 256 * 1024;

const KeyRecord = z.strictObject({
  id: z.string().regex(/^k_[0-9a-f]{12}$/),
  name: z.string().max(128),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  createdAt: z.string().max(64),
});
/** A stored key: never the key itself, only its hash. */
export type ApiKeyRecord = z.infer<typeof KeyRecord>;
const StoreFile = z.strictObject({ version: z.literal(1), keys: z.array(KeyRecord).max(MAX_API_KEYS) });

/** The directory of the E2B server's files under the state directory. */
export function e2bDir(stateDir: string): string {
  return join(stateDir, "e2b");
}

function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

async function readStore(stateDir: string): Promise<ApiKeyRecord[]> {
  let text: string;
  try {
    const raw = await readFile(join(e2bDir(stateDir), "apikeys.json"));
    if (raw.byteLength > MAX_STORE_BYTES) throw new InvalidArgumentError(`The API key store is over ${MAX_STORE_BYTES} bytes`);
    text = raw.toString("utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  return StoreFile.parse(parseJsonStrict(text, { maxDepth: 4 })).keys;
}

async function writeStore(stateDir: string, keys: ApiKeyRecord[]): Promise<void> {
  const dir = e2bDir(stateDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.apikeys.${randomBytes(6).toString("hex")}.tmp`);
  await writeFile(tmp, JSON.stringify({ version: 1, keys }, null, 2) + "\n", { mode: 0o600, flag: "wx" });
  await rename(tmp, join(dir, "apikeys.json"));
}

/** Makes a new key, stores its hash, and returns the key (shown once: it cannot be read back). */
export async function createApiKey(stateDir: string, name: string): Promise<{ key: string; record: ApiKeyRecord }> {
  if (name.length > 128) throw new InvalidArgumentError(`Invalid key name: at most 128 characters`);
  const keys = await readStore(stateDir);
  if (keys.length >= MAX_API_KEYS) throw new InvalidArgumentError(`The store already holds ${MAX_API_KEYS} keys: remove one first`);
  const key = `e2b_${randomBytes(20).toString("hex")}`;
  const record: ApiKeyRecord = { id: `k_${randomBytes(6).toString("hex")}`, name, sha256: sha256Hex(key), createdAt: new Date().toISOString() };
  await writeStore(stateDir, [...keys, record]);
  return { key, record };
}

/** The stored keys (ids, names and dates; hashes stay in the file). */
export async function listApiKeys(stateDir: string): Promise<ApiKeyRecord[]> {
  return readStore(stateDir);
}

/** Removes a key by id. @throws NotFoundError when there is none */
export async function removeApiKey(stateDir: string, id: string): Promise<void> {
  const keys = await readStore(stateDir);
  const left = keys.filter((k) => k.id !== id);
  if (left.length === keys.length) throw new NotFoundError(`No API key "${id.slice(0, 64)}"`);
  await writeStore(stateDir, left);
}

/** Whether `given` is one of the stored keys. Every stored hash is compared, in constant time each. */
export async function apiKeyMatches(stateDir: string, given: string | undefined): Promise<boolean> {
  if (given === undefined || given.length === 0 || given.length > 256) return false;
  const hash = createHash("sha256").update(given).digest();
  let found = false;
  for (const k of await readStore(stateDir)) {
    if (timingSafeEqual(hash, Buffer.from(k.sha256, "hex"))) found = true;
  }
  return found;
}

/** Loads the server's secret for access tokens, making it on first use (32 random bytes, mode 0600). */
export async function loadTokenSecret(stateDir: string): Promise<Buffer> {
  const dir = e2bDir(stateDir);
  const file = join(dir, "token.key");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    await writeFile(file, randomBytes(32), { mode: 0o600, flag: "wx" });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const secret = await readFile(file);
  if (secret.byteLength !== 32) throw new InvalidArgumentError(`The E2B token secret "${file}" is not 32 bytes: remove it to make a new one`);
  return secret;
}

/**
 * The access token of a sandbox: an HMAC of its id under the server's secret. The server keeps
 * no table of tokens, so a restarted server still accepts the tokens it gave out.
 */
export function accessTokenFor(secret: Buffer, sandboxId: string): string {
  return createHmac("sha256", secret).update(`envd-access:${sandboxId}`).digest("hex");
}

/** Whether `given` is the access token of `sandboxId` (constant time). */
export function accessTokenMatches(secret: Buffer, sandboxId: string, given: string | undefined): boolean {
  const want = createHash("sha256").update(accessTokenFor(secret, sandboxId)).digest();
  const got = createHash("sha256").update(given ?? "").digest();
  return timingSafeEqual(want, got) && given !== undefined && given.length > 0;
}
