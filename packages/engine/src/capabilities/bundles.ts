/**
 * Bundles: push a snapshot (with its image) or an image to a location, pull one by digest into
 * this host's stores. The format, transports and verification are in ../bundle/; this module
 * resolves what to push, names the temp directory (`<state>/bundles/tmp`, entries named after
 * their process so a later call removes those of dead ones), and audits each push and pull.
 */
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  InvalidArgumentError,
  NotFoundError,
  PullBundleRequest,
  PushBundleRequest,
  UnsupportedCapabilityError,
  type BundlePullInfo,
  type BundlePushInfo,
  type CallOptions,
} from "@mvm/protocol";
import { callSignal } from "../_internal/signals.js";
import { pullBundle as pull } from "../bundle/pull.js";
import { pushBundle as push } from "../bundle/push.js";
import { bundleReader, bundleWriter } from "../bundle/transport.js";
import { parseBundleDestination, parseBundleSource, type BundleLocation } from "../bundle/uri.js";
import { loadRegistryCredentials, type RegistryCredentials } from "../oci/auth.js";
import type { ImageRecord } from "../images/store.js";
import { isAlive, parseOwnerTag } from "../store/lock.js";
import type { SnapshotStore, StoredSnapshot } from "../store/snapshot-store.js";
import { assertOpen, parse, type EngineCore } from "./core.js";
import { snapshotInfoOf } from "./snapshots.js";

function store(core: EngineCore): SnapshotStore {
  if (core.snapshots === undefined) throw new UnsupportedCapabilityError("This engine has no snapshot store open");
  return core.snapshots;
}

/** `<state>/bundles/tmp`, made when absent, with the entries of dead processes removed. */
async function tmpRoot(core: EngineCore): Promise<string> {
  const dir = join(core.stateDir, "bundles", "tmp");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const name of await readdir(dir)) {
    const owner = parseOwnerTag(name);
    if (owner === undefined || !(await isAlive(owner))) await rm(join(dir, name), { recursive: true, force: true });
  }
  return dir;
}

/** What `source` names: a user snapshot (by id, or by digest when one has it), else an image. */
async function resolveSource(core: EngineCore, source: string): Promise<{ snapshot?: StoredSnapshot; image: ImageRecord }> {
  let snapshot: StoredSnapshot | undefined;
  if (source.startsWith("snap_")) snapshot = await store(core).get(source);
  else if (/^sha256:[0-9a-f]{64}$/.test(source)) {
    try {
      snapshot = await store(core).get(source);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
  }
  if (snapshot !== undefined) {
    if (snapshot.kind !== "user") throw new InvalidArgumentError(`Snapshot "${source}" belongs to the engine (a saved VM): it cannot be bundled`);
    const image = await core.options.images.resolve(snapshot.manifest.shape.imageDigest);
    if (image === undefined) throw new NotFoundError(`Snapshot "${snapshot.id}" needs image ${snapshot.manifest.shape.imageDigest}, which is not stored`);
    return { snapshot, image };
  }
  const image = await core.options.images.resolve(source);
  if (image === undefined) throw new NotFoundError(`Nothing to bundle: "${source.slice(0, 200)}" is neither a snapshot nor a stored image`, { hint: "list them with: mvmctl snapshot ls, mvmctl image ls" });
  return { image };
}

/** `{ credentials }` for an OCI registry location that has an entry in the credentials file, else `{}`. */
async function registryCredentials(core: EngineCore, location: BundleLocation): Promise<{ credentials?: RegistryCredentials }> {
  if (location.kind !== "oci") return {};
  const credentials = await loadRegistryCredentials(new URL(location.origin).host, { stateDir: core.stateDir });
  return credentials !== undefined ? { credentials } : {};
}

export async function pushBundle(core: EngineCore, request: PushBundleRequest, options: CallOptions = {}): Promise<BundlePushInfo> {
  assertOpen(core);
  const req = parse(PushBundleRequest, request, "bundle push");
  const destination = parseBundleDestination(req.destination);
  const { snapshot, image } = await resolveSource(core, req.source);
  const signal = callSignal(options);
  const result = await push({
    image,
    ...(snapshot === undefined ? {} : { snapshot }),
    chunks: store(core).chunks,
    writer: bundleWriter(destination, { ...(signal ? { signal } : {}), ...(await registryCredentials(core, destination)) }),
    tmpRoot: await tmpRoot(core),
    ...(signal ? { signal } : {}),
  });
  await core.gate.record({ type: "bundle.pushed", bundleDigest: result.digest.slice(7), kind: result.kind, sourceDigest: (snapshot?.digest ?? image.digest).slice(7) });
  return { digest: result.digest, uri: result.uri, kind: result.kind, bytes: result.bytes, packs: result.packs, chunks: result.chunks };
}

export async function pullBundle(core: EngineCore, request: PullBundleRequest, options: CallOptions = {}): Promise<BundlePullInfo> {
  assertOpen(core);
  const req = parse(PullBundleRequest, request, "bundle pull");
  const source = parseBundleSource(req.source);
  const signal = callSignal(options);
  const result = await pull({
    digest: source.digest,
    reader: bundleReader(source.location, { ...(signal ? { signal } : {}), ...(await registryCredentials(core, source.location)) }),
    snapshots: store(core),
    images: core.options.images,
    ...(req.retention === undefined ? {} : { retention: req.retention }),
    tmpRoot: await tmpRoot(core),
    ...(signal ? { signal } : {}),
  });
  await core.gate.record({
    type: "bundle.pulled",
    bundleDigest: result.digest.slice(7),
    kind: result.kind,
    imageDigest: result.image.digest.slice(7),
    ...(result.snapshot === undefined ? {} : { snapshotId: result.snapshot.id }),
  });
  return {
    digest: result.digest,
    kind: result.kind,
    image: { digest: result.image.digest, refs: result.image.refs },
    ...(result.snapshot === undefined ? {} : { snapshot: snapshotInfoOf(core, result.snapshot) }),
    fetchedBytes: result.fetchedBytes,
    packsFetched: result.packsFetched,
    packs: result.packs,
    chunksReused: result.chunksReused,
  };
}
