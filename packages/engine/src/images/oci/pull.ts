/**
 * `image pull REGISTRY/REPO:TAG` (or `…@sha256:DIGEST`): fetches the linux/amd64 image into a
 * private OCI layout through the distribution client (oci/registry.ts), then imports it like any
 * layout. A tag is resolved once, to the digest of the manifest it names; that digest is what is
 * recorded and what `REGISTRY/REPO@sha256:…` resolves to afterwards.
 *
 * Plain http is used only for loopback registries (the client refuses it elsewhere); everything
 * else is https.
 */
import type { RegistryCredentials } from "../../oci/auth.js";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, type Sha256Digest } from "@mvm/protocol";
import { isLoopbackHost } from "../../oci/http.js";
import { OciRegistry } from "../../oci/registry.js";
import { quote } from "../ref.js";
import { MAX_OCI_CONFIG_BYTES, OciImageError, parseManifestOrIndex, selectPlatform, type ImageManifest } from "./documents.js";

/** A registry reference split into its parts. */
export interface RegistryRef {
  /** `host[:port]`, lowercase. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: Sha256Digest;
}

const HOST_RE = /^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*(?::[0-9]{1,5})?$/;
const REPO_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/**
 * Parses `REGISTRY/REPO:TAG`, `REGISTRY/REPO@sha256:HEX` or `REGISTRY/REPO:TAG@sha256:HEX`. The
 * registry part is required (it must contain a `.` or `:` or be `localhost`): no default registry
 * is assumed, so a reference never silently means Docker Hub.
 * @throws InvalidArgumentError
 */
export function parseRegistryRef(input: string): RegistryRef {
  const bad = (why: string): InvalidArgumentError =>
    new InvalidArgumentError(`Invalid registry reference ${quote(input)}: ${why}`, { hint: 'write it as "registry.example:5000/team/app:1.0" or "…/app@sha256:<hex>"' });
  if (input.length > 1024) throw bad("longer than 1024 characters");
  let rest = input;
  let digest: Sha256Digest | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    const d = rest.slice(at + 1);
    if (!/^sha256:[0-9a-f]{64}$/.test(d)) throw bad('the part after "@" is not "sha256:" and 64 lowercase hex digits');
    digest = d as Sha256Digest;
    rest = rest.slice(0, at);
  }
  const slash = rest.indexOf("/");
  if (slash <= 0) throw bad("no registry host");
  const registry = rest.slice(0, slash);
  if (!HOST_RE.test(registry) || !(registry.includes(".") || registry.includes(":") || registry === "localhost")) throw bad(`${quote(registry)} is not a registry host`);
  let repository = rest.slice(slash + 1);
  let tag: string | undefined;
  const colon = repository.lastIndexOf(":");
  if (colon >= 0) {
    tag = repository.slice(colon + 1);
    repository = repository.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(`tag ${quote(tag)} is malformed`);
  }
  if (repository.length > 255 || !REPO_RE.test(repository)) throw bad(`repository ${quote(repository)} is malformed`);
  if (tag === undefined && digest === undefined) throw bad('it names neither a tag (":TAG") nor a digest ("@sha256:…")');
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** `REGISTRY/REPO@sha256:…`: the pinned form a pulled image is also stored under. */
export function pinnedRef(ref: RegistryRef, digest: Sha256Digest): string {
  return `${ref.registry}/${ref.repository}@${digest}`;
}

export interface PullToLayoutOptions {
  signal?: AbortSignal;
  /** Most bytes all layer blobs together may take. */
  maxBlobBytes: number;
  /** Per-request timeout. */
  timeoutMs?: number;
  /** Trusted CA certificates (PEM) for an https registry. */
  ca?: string;
  /** Credentials for the registry (oci/auth.ts). */
  credentials?: RegistryCredentials;
}

/**
 * Fetches the image `ref` names into a new OCI layout at `layoutDir`: its manifest, config and
 * layers, each verified by digest and size as it arrives.
 * @returns the digest of the image manifest (the one for linux/amd64 when the tag names an index).
 */
export async function pullToLayout(ref: RegistryRef, layoutDir: string, options: PullToLayoutOptions): Promise<{ manifestDigest: Sha256Digest; tagDigest: Sha256Digest }> {
  const host = ref.registry.replace(/:[0-9]+$/, "");
  const origin = `${isLoopbackHost(host) ? "http" : "https"}://${ref.registry}`;
  const registry = new OciRegistry({
    origin,
    repository: ref.repository,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.ca !== undefined ? { ca: options.ca } : {}),
    ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
  });
  const what = `${ref.registry}/${ref.repository}`;
  const first = await registry.getManifest(ref.digest ?? ref.tag!);
  const tagDigest = first.digest as Sha256Digest;
  let fetched = first;
  let doc = parseManifestOrIndex(fetched.bytes, fetched.mediaType, `${what} manifest ${fetched.digest}`);
  if (doc.kind === "index") {
    const chosen = selectPlatform(doc.index, `${what} index ${fetched.digest}`);
    fetched = await registry.getManifest(chosen.digest);
    doc = parseManifestOrIndex(fetched.bytes, fetched.mediaType, `${what} manifest ${fetched.digest}`);
    if (doc.kind === "index") throw new OciImageError("schema", `Cannot pull ${what}: index ${fetched.digest} points at another index`);
  }
  const manifest: ImageManifest = doc.manifest;
  const blobs = join(layoutDir, "blobs", "sha256");
  await mkdir(blobs, { recursive: true, mode: 0o700 });
  const put = (d: string): string => join(blobs, d.slice("sha256:".length));
  await writeFile(put(fetched.digest), fetched.bytes, { flag: "wx", mode: 0o600 });
  if (manifest.config.size > MAX_OCI_CONFIG_BYTES) throw new OciImageError("too-large", `Cannot pull ${what}: its config is ${manifest.config.size} bytes, over the limit of ${MAX_OCI_CONFIG_BYTES}`);
  await registry.getBlobToFile(manifest.config.digest, put(manifest.config.digest), { sizeBytes: manifest.config.size });
  let total = 0;
  const seen = new Set<string>([manifest.config.digest]);
  for (const layer of manifest.layers) {
    total += layer.size;
    if (total > options.maxBlobBytes) throw new OciImageError("too-large", `Cannot pull ${what}: its layers take more than ${options.maxBlobBytes} bytes`);
    if (seen.has(layer.digest)) continue;
    seen.add(layer.digest);
    options.signal?.throwIfAborted();
    await registry.getBlobToFile(layer.digest, put(layer.digest), { sizeBytes: layer.size });
  }
  const mediaType = fetched.mediaType === "" ? (manifest.mediaType ?? "application/vnd.oci.image.manifest.v1+json") : fetched.mediaType;
  const index = { schemaVersion: 2, manifests: [{ mediaType, digest: fetched.digest, size: fetched.bytes.length }] };
  await writeFile(join(layoutDir, "index.json"), JSON.stringify(index), { flag: "wx", mode: 0o600 });
  await writeFile(join(layoutDir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }), { flag: "wx", mode: 0o600 });
  return { manifestDigest: fetched.digest as Sha256Digest, tagDigest };
}
