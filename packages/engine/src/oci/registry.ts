/**
 * A client of the OCI distribution API (the HTTP API of `docker-registry`/CNCF distribution,
 * Harbor, Zot, GHCR and the rest): HEAD/GET/PUT of manifests, HEAD/GET of blobs, blob uploads
 * (monolithic, or chunked with PATCH), for one repository on one registry.
 *
 * What it guarantees about what it reads:
 * - every blob and manifest fetched by digest is checked against that digest (sha256) before the
 *   caller sees it; a blob written to a file is hashed as it streams and the file removed when it
 *   does not verify;
 * - every answer is size-capped before it is buffered: manifests at
 *   {@link MAX_OCI_MANIFEST_BYTES}, blobs at the size the caller expects (their descriptor's);
 * - redirects are followed only within the registry's origin; plain http only on loopback.
 *
 * Authentication: anonymous until a 401; then HTTP basic or the bearer-token flow with the
 * credentials given (auth.ts says where they may be sent). A 401 that persists is a TransportError.
 */
import { createHash } from "node:crypto";
import { open, rm, stat } from "node:fs/promises";
import { InvalidArgumentError, NotFoundError, TransportError } from "@mvm/protocol";
import { RegistryAuth, type RegistryCredentials } from "./auth.js";
import { checkOrigin, readBody, responseHeader, send, statusError, type HttpOptions, type HttpResponse } from "./http.js";
import { MAX_OCI_MANIFEST_BYTES, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, OciDigestSchema, type OciDigest } from "./manifest.js";

/** A repository name as the distribution spec allows it (lowercase path components). */
const REPOSITORY = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const MAX_REPOSITORY_CHARS = 255;
/** Blobs at most this large are uploaded in one PUT; larger ones in PATCH chunks of this size. @default 64 MiB */
export const DEFAULT_UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024;
/** The manifest media types asked for by default. */
export const MANIFEST_ACCEPT = [MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_LIST].join(", ");

/** True when `value` is `sha256:` and 64 lowercase hex digits. */
export function isOciDigest(value: unknown): value is OciDigest {
  return OciDigestSchema.safeParse(value).success;
}

/** sha256 of `bytes` as an OCI digest. */
export function sha256Digest(bytes: Uint8Array): OciDigest {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Checks a repository name. @throws InvalidArgumentError */
export function checkRepository(name: string): void {
  if (name.length > MAX_REPOSITORY_CHARS || !REPOSITORY.test(name)) {
    throw new InvalidArgumentError(`Invalid repository name: ${JSON.stringify(name.slice(0, 80))}`);
  }
}

/** Checks a tag or digest used as a manifest reference. @throws InvalidArgumentError */
export function checkReference(reference: string): void {
  if (!TAG.test(reference) && !isOciDigest(reference)) {
    throw new InvalidArgumentError(`Invalid manifest reference: ${JSON.stringify(String(reference).slice(0, 80))}`);
  }
}

/** Options of {@link OciRegistry}. */
export interface OciRegistryOptions extends HttpOptions {
  /** The registry's origin: `https://host[:port]`, or `http://` on a loopback host only. */
  readonly origin: string;
  /** The repository, e.g. `team/bundles`. */
  readonly repository: string;
  /** Blobs larger than this are uploaded in chunks of this size, in bytes. @default 64 MiB */
  readonly uploadChunkBytes?: number;
  /** Credentials for basic auth or a token realm; absent: anonymous (a token realm may still issue anonymous tokens). */
  readonly credentials?: RegistryCredentials;
}

/** A manifest as fetched: its bytes, its media type and its digest (verified). */
export interface FetchedManifest {
  readonly bytes: Buffer;
  readonly mediaType: string;
  readonly digest: OciDigest;
}

/** A blob to upload: bytes in memory, or a file on disk. */
export type BlobSource = Uint8Array | { readonly path: string };

/**
 * One repository on one registry.
 *
 * @example
 * const reg = new OciRegistry({ origin: "http://127.0.0.1:5000", repository: "mvm/bundles" });
 * const digest = await reg.putBlob(Buffer.from("hello"));
 * const bytes = await reg.getBlob(digest, { sizeBytes: 5 });
 */
export class OciRegistry {
  readonly origin: string;
  readonly repository: string;
  readonly #http: HttpOptions;
  readonly #chunkBytes: number;
  readonly #auth: RegistryAuth;

  constructor(options: OciRegistryOptions) {
    this.origin = checkOrigin(options.origin);
    if (new URL(options.origin).pathname !== "/") throw new InvalidArgumentError(`Registry origin must have no path: ${JSON.stringify(options.origin.slice(0, 200))}`);
    checkRepository(options.repository);
    this.repository = options.repository;
    this.#chunkBytes = options.uploadChunkBytes ?? DEFAULT_UPLOAD_CHUNK_BYTES;
    if (!Number.isInteger(this.#chunkBytes) || this.#chunkBytes < 1) throw new InvalidArgumentError(`Invalid uploadChunkBytes: ${this.#chunkBytes}`);
    this.#http = {
      ...(options.ca === undefined ? {} : { ca: options.ca }),
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    };
    this.#auth = new RegistryAuth(this.origin, options.credentials, this.#http);
  }

  #url(path: string): string {
    return `${this.origin}/v2/${this.repository}/${path}`;
  }

  async #send(method: "GET" | "HEAD" | "PUT" | "POST" | "PATCH", url: string, extra: { headers?: Record<string, string>; body?: Uint8Array | { path: string; start: number; length: number } } = {}): Promise<HttpResponse> {
    const request = (authorization: string | undefined) =>
      send({ ...this.#http, method, url, ...extra, headers: { ...extra.headers, ...(authorization !== undefined ? { authorization } : {}) } });
    let authorization = this.#auth.header(url);
    let res = await request(authorization);
    // One more try per new authorization a 401 asks for (a token of a wider scope, say).
    for (let attempt = 0; res.status === 401 && attempt < 2; attempt++) {
      const next = await this.#auth.challenge(res, url, authorization);
      if (next === undefined) break;
      res.discard();
      authorization = next;
      res = await request(authorization);
    }
    if (res.status === 401 || res.status === 403) {
      const err = await statusError(res, `${method} ${url}`);
      throw new TransportError(err.message, { hint: "the registry refused access: check its entry in the registry credentials file (registry-auth.json, or MVM_REGISTRY_AUTH_FILE)" });
    }
    return res;
  }

  /** Checks the registry speaks the distribution API (`GET /v2/`). @throws TransportError */
  async ping(): Promise<void> {
    const url = `${this.origin}/v2/`;
    const res = await this.#send("GET", url);
    if (res.status !== 200) throw await statusError(res, `GET ${url}`);
    res.discard();
  }

  /** The size of blob `digest` when the repository has it, else undefined. */
  async headBlob(digest: OciDigest): Promise<number | undefined> {
    checkDigest(digest);
    const url = this.#url(`blobs/${digest}`);
    const res = await this.#send("HEAD", url);
    res.discard();
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new TransportError(`HEAD ${url}: HTTP ${res.status}`);
    return contentLength(res, `HEAD ${url}`);
  }

  /** Sends GET for blob `digest`; answers only a 200, whose body the caller reads. */
  async #getBlobResponse(digest: OciDigest) {
    checkDigest(digest);
    const url = this.#url(`blobs/${digest}`);
    const res = await this.#send("GET", url);
    if (res.status === 404) {
      res.discard();
      throw new NotFoundError(`Blob ${digest} is not in ${this.origin}/${this.repository}`);
    }
    if (res.status !== 200) throw await statusError(res, `GET ${url}`);
    return { res, url };
  }

  /**
   * Fetches blob `digest` into memory; it must be exactly `sizeBytes` long and hash to `digest`.
   * @throws NotFoundError when the registry does not have it; TransportError when it is larger,
   *   shorter or does not verify.
   */
  async getBlob(digest: OciDigest, options: { sizeBytes: number }): Promise<Buffer> {
    const { res, url } = await this.#getBlobResponse(digest);
    const bytes = await readBody(res, options.sizeBytes, `GET ${url}`);
    if (bytes.byteLength !== options.sizeBytes) throw new TransportError(`Blob ${digest}: ${bytes.byteLength} bytes arrived, ${options.sizeBytes} expected`);
    const actual = sha256Digest(bytes);
    if (actual !== digest) throw new TransportError(`Blob ${digest} does not match its bytes (${actual})`);
    return bytes;
  }

  /**
   * Streams blob `digest` into a new file `path` (created exclusively, 0600), hashing as it
   * goes; it must be exactly `sizeBytes` long and hash to `digest`, or the file is removed.
   * @throws NotFoundError, TransportError
   */
  async getBlobToFile(digest: OciDigest, path: string, options: { sizeBytes: number }): Promise<void> {
    const { res, url } = await this.#getBlobResponse(digest);
    await streamVerified(res, path, digest, options.sizeBytes, `GET ${url}`);
  }

  /**
   * Uploads a blob unless the repository already has it; returns its digest. Blobs up to the
   * chunk size go in one request (POST then PUT with the bytes); larger ones in PATCH chunks.
   * The registry checks the digest given at the final PUT.
   */
  async putBlob(source: BlobSource, knownDigest?: OciDigest): Promise<OciDigest> {
    const { digest, size } = await describe(source, knownDigest);
    if ((await this.headBlob(digest)) === size) return digest;
    const startUrl = this.#url("blobs/uploads/");
    const started = await this.#send("POST", startUrl, { body: new Uint8Array(0) });
    if (started.status !== 202) throw await statusError(started, `POST ${startUrl}`);
    started.discard();
    let location = this.#location(started, `POST ${startUrl}`);
    const region = (start: number, length: number): Uint8Array | { path: string; start: number; length: number } =>
      source instanceof Uint8Array ? source.subarray(start, start + length) : { path: source.path, start, length };
    let finalBody: Uint8Array | { path: string; start: number; length: number } = new Uint8Array(0);
    if (size <= this.#chunkBytes) {
      finalBody = region(0, size);
    } else {
      for (let offset = 0; offset < size; offset += this.#chunkBytes) {
        const length = Math.min(this.#chunkBytes, size - offset);
        const res = await this.#send("PATCH", location, {
          headers: { "content-type": "application/octet-stream", "content-range": `${offset}-${offset + length - 1}` },
          body: region(offset, length),
        });
        if (res.status !== 202) throw await statusError(res, `PATCH upload of ${digest}`);
        res.discard();
        location = this.#location(res, `PATCH upload of ${digest}`);
      }
    }
    const done = new URL(location);
    done.searchParams.set("digest", digest);
    const res = await this.#send("PUT", done.toString(), { headers: { "content-type": "application/octet-stream" }, body: finalBody });
    if (res.status !== 201) throw await statusError(res, `PUT upload of ${digest}`);
    res.discard();
    return digest;
  }

  /** The Location header of an upload answer, resolved and checked to stay on this origin. */
  #location(res: HttpResponse, what: string): string {
    const raw = responseHeader(res, "location");
    if (raw === undefined) throw new TransportError(`${what}: no upload location`);
    let url: URL;
    try {
      url = new URL(raw, this.origin);
    } catch (err) {
      throw new TransportError(`${what}: invalid upload location`, { cause: err });
    }
    if (url.origin !== this.origin) throw new TransportError(`${what}: upload location on another origin "${url.origin}"`);
    return url.toString();
  }

  /**
   * Fetches a manifest by tag or digest (at most {@link MAX_OCI_MANIFEST_BYTES}). By digest, its
   * bytes must hash to it; by tag, a `Docker-Content-Digest` the registry sends must match them.
   * The bytes are not parsed here: use `parseOciManifest` / `parseOciIndex`.
   * @throws NotFoundError, TransportError
   */
  async getManifest(reference: string, options: { accept?: string } = {}): Promise<FetchedManifest> {
    checkReference(reference);
    const url = this.#url(`manifests/${reference}`);
    const res = await this.#send("GET", url, { headers: { accept: options.accept ?? MANIFEST_ACCEPT } });
    if (res.status === 404) {
      res.discard();
      throw new NotFoundError(`Manifest ${reference} is not in ${this.origin}/${this.repository}`);
    }
    if (res.status !== 200) throw await statusError(res, `GET ${url}`);
    const bytes = await readBody(res, MAX_OCI_MANIFEST_BYTES, `GET ${url}`);
    const digest = sha256Digest(bytes);
    if (isOciDigest(reference) && digest !== reference) throw new TransportError(`Manifest ${reference} does not match its bytes (${digest})`);
    const claimed = responseHeader(res, "docker-content-digest");
    if (claimed !== undefined && claimed !== digest) throw new TransportError(`Manifest ${reference}: the registry names it ${claimed.slice(0, 80)}, its bytes hash to ${digest}`);
    const mediaType = (responseHeader(res, "content-type") ?? "").split(";")[0]?.trim() ?? "";
    return { bytes, mediaType, digest };
  }

  /** The digest of manifest `reference` when present (HEAD), else undefined. */
  async headManifest(reference: string, options: { accept?: string } = {}): Promise<OciDigest | undefined> {
    checkReference(reference);
    const url = this.#url(`manifests/${reference}`);
    const res = await this.#send("HEAD", url, { headers: { accept: options.accept ?? MANIFEST_ACCEPT } });
    res.discard();
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new TransportError(`HEAD ${url}: HTTP ${res.status}`);
    const digest = responseHeader(res, "docker-content-digest");
    if (digest === undefined || !isOciDigest(digest)) throw new TransportError(`HEAD ${url}: no valid Docker-Content-Digest`);
    if (isOciDigest(reference) && digest !== reference) throw new TransportError(`HEAD ${url}: the registry names it ${digest}`);
    return digest;
  }

  /**
   * Uploads a manifest under `reference` (a tag, or its own digest) and returns its digest. Every
   * blob it names must be uploaded first.
   */
  async putManifest(reference: string, bytes: Uint8Array, mediaType: string): Promise<OciDigest> {
    checkReference(reference);
    if (bytes.byteLength > MAX_OCI_MANIFEST_BYTES) throw new InvalidArgumentError(`Manifest of ${bytes.byteLength} bytes is over the ${MAX_OCI_MANIFEST_BYTES}-byte limit`);
    const digest = sha256Digest(bytes);
    if (isOciDigest(reference) && reference !== digest) throw new InvalidArgumentError(`Manifest bytes hash to ${digest}, not ${reference}`);
    const url = this.#url(`manifests/${reference}`);
    const res = await this.#send("PUT", url, { headers: { "content-type": mediaType }, body: bytes });
    if (res.status !== 201) throw await statusError(res, `PUT ${url}`);
    res.discard();
    const claimed = responseHeader(res, "docker-content-digest");
    if (claimed !== undefined && claimed !== digest) throw new TransportError(`PUT ${url}: the registry names it ${claimed.slice(0, 80)}, not ${digest}`);
    return digest;
  }
}

function checkDigest(digest: string): asserts digest is OciDigest {
  if (!isOciDigest(digest)) throw new InvalidArgumentError(`Invalid digest: ${JSON.stringify(String(digest).slice(0, 80))}`);
}

function contentLength(res: HttpResponse, what: string): number {
  const raw = responseHeader(res, "content-length");
  if (raw === undefined || !/^\d{1,15}$/.test(raw)) throw new TransportError(`${what}: no valid Content-Length`);
  return Number(raw);
}

async function describe(source: BlobSource, known: OciDigest | undefined): Promise<{ digest: OciDigest; size: number }> {
  if (source instanceof Uint8Array) {
    const digest = sha256Digest(source);
    if (known !== undefined && known !== digest) throw new InvalidArgumentError(`Blob bytes hash to ${digest}, not ${known}`);
    return { digest, size: source.byteLength };
  }
  const size = (await stat(source.path)).size;
  if (known !== undefined) {
    checkDigest(known);
    return { digest: known, size };
  }
  return { digest: await sha256File(source.path), size };
}

/** sha256 of a file's bytes, as an OCI digest. */
export async function sha256File(path: string): Promise<OciDigest> {
  const hash = createHash("sha256");
  const handle = await open(path, "r");
  try {
    for await (const piece of handle.createReadStream({ autoClose: false })) hash.update(piece as Buffer);
  } finally {
    await handle.close();
  }
  return `sha256:${hash.digest("hex")}`;
}

/**
 * Writes an answer's body to a new file, exactly `sizeBytes` long and hashing to `digest`;
 * removes the file on any failure.
 * @throws TransportError
 */
export async function streamVerified(res: HttpResponse, path: string, digest: OciDigest, sizeBytes: number, what: string): Promise<void> {
  const declared = responseHeader(res, "content-length");
  if (declared !== undefined && declared !== String(sizeBytes)) {
    res.body.destroy();
    throw new TransportError(`${what}: answer of ${declared.slice(0, 20)} bytes, ${sizeBytes} expected`);
  }
  const handle = await open(path, "wx", 0o600);
  const hash = createHash("sha256");
  let total = 0;
  let ok = false;
  try {
    try {
      for await (const piece of res.body as AsyncIterable<Buffer>) {
        total += piece.byteLength;
        if (total > sizeBytes) throw new TransportError(`${what}: answer is over the expected ${sizeBytes} bytes`);
        hash.update(piece);
        await handle.write(piece);
      }
    } catch (err) {
      res.body.destroy();
      if (err instanceof TransportError) throw err;
      throw new TransportError(`${what}: ${(err as Error).message}`, { cause: err });
    }
    if (total !== sizeBytes) throw new TransportError(`${what}: ${total} bytes arrived, ${sizeBytes} expected`);
    const actual = `sha256:${hash.digest("hex")}`;
    if (actual !== digest) throw new TransportError(`${what}: blob ${digest} does not match its bytes (${actual})`);
    ok = true;
  } finally {
    await handle.close();
    if (!ok) await rm(path, { force: true });
  }
}
