/**
 * The host's Ed25519 audit signing key, kept at `<stateDir>/keys/host-ed25519.pem` (PKCS#8 PEM,
 * mode 0600, directory 0700). It is created on first use: the key is written to a private temp
 * file, fsynced, and hard-linked to its final name, which fails when the name exists, so engines
 * racing to create it all end up using the one key that won.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { chmod, link, mkdir, open, readFile, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, PermissionDeniedError } from "@mvm/protocol";

export const HOST_KEY_FILE = "host-ed25519.pem";

export interface HostKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** Where the private key is stored. */
  readonly path: string;
}

/** Path of the host key under a state directory. */
export function hostKeyPath(stateDir: string): string {
  return join(stateDir, "keys", HOST_KEY_FILE);
}

/**
 * Loads the host key, creating it when absent.
 * @throws PermissionDeniedError when the key file is readable by group or others.
 * @throws InvalidArgumentError when the file does not hold an Ed25519 private key.
 */
export async function loadOrCreateHostKey(stateDir: string): Promise<HostKey> {
  const dir = join(stateDir, "keys");
  await mkdir(stateDir, { recursive: true });
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  await chmod(dir, 0o700);
  const path = join(dir, HOST_KEY_FILE);
  try {
    return await loadHostKey(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const { privateKey } = generateKeyPairSync("ed25519");
  const pem = privateKey.export({ type: "pkcs8", format: "pem" });
  const temp = join(dir, `.${HOST_KEY_FILE}.${process.pid}-${randomBytes(6).toString("hex")}.new`);
  const fh = await open(temp, "wx", 0o600);
  try {
    await fh.writeFile(pem);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await link(temp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
  await syncDir(dir);
  return loadHostKey(path);
}

/** Loads an existing private key file (no creation). */
export async function loadHostKey(path: string): Promise<HostKey> {
  const info = await stat(path);
  if ((info.mode & 0o077) !== 0) {
    throw new PermissionDeniedError(`Audit key "${path}" is accessible by group or others: mode ${(info.mode & 0o777).toString(8)}`, {
      hint: `Run: chmod 600 ${path}`,
    });
  }
  const pem = await readFile(path, "utf8");
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (cause) {
    throw new InvalidArgumentError(`Audit key "${path}" is not a readable private key`, { cause });
  }
  if (privateKey.asymmetricKeyType !== "ed25519") {
    throw new InvalidArgumentError(`Audit key "${path}" is not Ed25519: "${privateKey.asymmetricKeyType ?? "unknown"}"`);
  }
  return { privateKey, publicKey: createPublicKey(privateKey), path };
}

/** The public key as SPKI PEM, the format `mvmctl audit verify --pubkey` reads. */
export function publicKeyPem(publicKey: KeyObject): string {
  return publicKey.export({ type: "spki", format: "pem" }).toString();
}

/** The 32 raw bytes of an Ed25519 public key. */
export function publicKeyRaw(publicKey: KeyObject): Buffer {
  const der = publicKey.export({ type: "spki", format: "der" });
  return der.subarray(der.length - 32);
}

/**
 * Parses a public key given as SPKI PEM, as a private key PEM (its public half is used), or as
 * 64 hex digits / 44 base64 characters of the raw 32 bytes.
 * @throws InvalidArgumentError when the text is none of these or not Ed25519.
 */
export function parsePublicKey(text: string, source = "public key"): KeyObject {
  const trimmed = text.trim();
  let key: KeyObject;
  try {
    if (/^[0-9a-fA-F]{64}$/.test(trimmed) || /^[A-Za-z0-9+/]{43}=$/.test(trimmed)) {
      const raw = Buffer.from(trimmed, trimmed.length === 64 ? "hex" : "base64");
      key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });
    } else {
      key = createPublicKey(trimmed);
    }
  } catch (cause) {
    throw new InvalidArgumentError(`Cannot read ${source}: not a PEM key or raw Ed25519 key`, { cause });
  }
  if (key.asymmetricKeyType !== "ed25519") {
    throw new InvalidArgumentError(`Cannot use ${source}: key type is "${key.asymmetricKeyType ?? "unknown"}", not "ed25519"`);
  }
  return key;
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
