/**
 * A certificate authority that lives only for one sandbox. The sandbox trusts its certificate; the
 * gateway uses it to issue leaf certificates for the hosts it intercepts. Private keys are made
 * with WebCrypto, stay in this process's memory and are handed to node:tls as PKCS#8 PEM.
 */
import { webcrypto } from "node:crypto";
import type * as X509 from "@peculiar/x509";
import { InvalidArgumentError } from "@mvm/protocol";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

let library: Promise<typeof X509> | undefined;

/**
 * The X.509 library, loaded when the first sandbox CA is made: it is the largest module the engine
 * uses, and most engine starts (every one-shot run without TLS interception) never need it.
 */
function x509Library(): Promise<typeof X509> {
  library ??= import("@peculiar/x509").then((x509) => {
    x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
    return x509;
  });
  return library;
}

const KEY_ALGORITHM = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING_ALGORITHM = { name: "ECDSA", hash: "SHA-256" } as const;
const DAY_MS = 24 * 60 * 60 * 1000;
const LEAF_BACKDATE_MS = DAY_MS;
const LEAF_VALIDITY_MS = 7 * DAY_MS;
/** Most leaf certificates kept per CA; the least recently used one goes first. */
export const MAX_CACHED_LEAVES = 256;
const MAX_HOST_CHARS = 253;

/** A leaf key and certificate in the PEM forms node:tls takes. */
export interface LeafCertificate {
  readonly keyPem: string;
  readonly certPem: string;
}

/** Options of {@link SandboxCa.create}. */
export interface SandboxCaOptions {
  /** Named in the CA's subject, so a person reading the trust store can tell CAs apart. */
  readonly sandboxId: string;
  /** How long the CA certificate is valid, counted from one day ago. @default 30 */
  readonly validityDays?: number;
}

/** A 16-byte random serial with the top bit clear, so DER keeps it positive and 16 bytes long. */
function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40;
  return Buffer.from(bytes).toString("hex");
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey("pkcs8", key);
  return (await x509Library()).PemConverter.encode(der, "PRIVATE KEY");
}

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ["sign", "verify"])) as CryptoKeyPair;
}

/** The host names a leaf may carry: DNS labels only, so nothing can smuggle syntax into a name. */
function checkHost(host: string): void {
  const labels = host.split(".");
  const ok =
    host.length > 0 &&
    host.length <= MAX_HOST_CHARS &&
    labels.every((label) => /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/.test(label));
  if (!ok) throw new InvalidArgumentError(`Cannot issue a certificate for "${host.slice(0, MAX_HOST_CHARS)}": not a lowercase DNS name`);
}

/**
 * A per-sandbox CA (ECDSA P-256, SHA-256) that issues short-lived leaf certificates.
 *
 * @example
 * const ca = await SandboxCa.create({ sandboxId: "sbx_1" });
 * const { keyPem, certPem } = await ca.leaf("api.openai.com");
 * new tls.TLSSocket(client, { isServer: true, key: keyPem, cert: certPem });
 */
export class SandboxCa {
  /** The CA certificate (PEM), to be trusted inside the sandbox. */
  readonly certPem: string;
  readonly #cert: X509.X509Certificate;
  readonly #keys: CryptoKeyPair;
  readonly #leaves = new Map<string, Promise<LeafCertificate>>();

  private constructor(cert: X509.X509Certificate, keys: CryptoKeyPair) {
    this.#cert = cert;
    this.#keys = keys;
    this.certPem = cert.toString("pem");
  }

  /** Makes a fresh CA key and a self-signed CA certificate named "mvm sandbox CA <sandboxId>". */
  static async create(options: SandboxCaOptions): Promise<SandboxCa> {
    const validityDays = options.validityDays ?? 30;
    if (!Number.isInteger(validityDays) || validityDays < 1 || validityDays > 3650) {
      throw new InvalidArgumentError(`Cannot create a sandbox CA: validityDays "${validityDays}" is not an integer from 1 to 3650`);
    }
    const x509 = await x509Library();
    const keys = await newKeyPair();
    const now = Date.now();
    const name: X509.JsonName = [{ CN: [`mvm sandbox CA ${options.sandboxId}`] }];
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name,
      notBefore: new Date(now - DAY_MS),
      notAfter: new Date(now + validityDays * DAY_MS),
      keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new SandboxCa(cert, keys);
  }

  /** The CA's public key, for checking signatures of issued certificates. */
  get publicKey(): CryptoKey {
    return this.#keys.publicKey;
  }

  /**
   * A leaf certificate for `host` (SAN dNSName, serverAuth, valid from one day ago for seven days).
   * Cached per host, least recently used out first; concurrent calls for one host share one promise.
   */
  leaf(host: string): Promise<LeafCertificate> {
    checkHost(host);
    const cached = this.#leaves.get(host);
    if (cached !== undefined) {
      this.#leaves.delete(host);
      this.#leaves.set(host, cached);
      return cached;
    }
    const made = this.#issue(host);
    this.#leaves.set(host, made);
    made.catch(() => {
      if (this.#leaves.get(host) === made) this.#leaves.delete(host);
    });
    while (this.#leaves.size > MAX_CACHED_LEAVES) {
      const oldest = this.#leaves.keys().next();
      if (oldest.done === true) break;
      this.#leaves.delete(oldest.value);
    }
    return made;
  }

  async #issue(host: string): Promise<LeafCertificate> {
    const x509 = await x509Library();
    const keys = await newKeyPair();
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: [{ CN: [host] }],
      issuer: this.#cert.subjectName,
      notBefore: new Date(now - LEAF_BACKDATE_MS),
      notAfter: new Date(now + LEAF_VALIDITY_MS),
      publicKey: keys.publicKey,
      signingKey: this.#keys.privateKey,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension([{ type: "dns", value: host }], false),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(this.#keys.publicKey),
      ],
    });
    return { keyPem: await privateKeyPem(keys.privateKey), certPem: cert.toString("pem") };
  }
}
