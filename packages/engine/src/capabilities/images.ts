/** Images: list, build, import, remove. */
import { stat } from "node:fs/promises";
import { ImportImageApiRequest, PullImageApiRequest, MvmError, NotFoundError, type CallOptions, type Sha256Digest, type ImageInfo, type ImageInspect, type ImageProvenanceStatus, type ProgressEvent } from "@mvm/protocol";
import { verifyProvenance } from "../images/provenance.js";
import { callSignal } from "../_internal/signals.js";
import { parse, type EngineCore } from "./core.js";
import type { ImageRecord } from "../images/store.js";
import { PolicyRuleDeniedError } from "../admission/admit.js";
import { evaluatePullPolicy } from "../admission/policy.js";
import { recordImageRefusal } from "./image-defaults.js";
import { loadRegistryCredentials } from "../oci/auth.js";
import { parseRegistryRef } from "../images/oci/pull.js";

export async function listImages(core: EngineCore): Promise<ImageInfo[]> {
  const list = await core.options.images.list();
  return list.map(toImageInfo);
}

export async function buildImage(core: EngineCore, ref: string, options: CallOptions & { force?: boolean; onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
  const signal = callSignal(options);
  const rec = await core.options.images.buildDebian(ref, {
    ...(options.force !== undefined ? { force: options.force } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(signal ? { signal } : {}),
  });
  return toImageInfo(rec);
}

export async function importImage(core: EngineCore, 
  path: string,
  name: string,
  options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {},
): Promise<ImageInfo> {
  const req = parse(ImportImageApiRequest, { path, name }, "image import");
  const signal = callSignal(options);
  const opts = { ...(options.onProgress ? { onProgress: options.onProgress } : {}), ...(signal ? { signal } : {}) };
  if (/^(?:oci-layout|docker-archive):/.test(req.path)) return toImageInfo(await core.options.images.importOci(req.path, req.name, opts));
  const st = await stat(req.path).catch((err: unknown) => {
    throw new NotFoundError(`Cannot import "${req.path}": it does not exist`, { cause: err });
  });
  const rec = st.isDirectory() ? await core.options.images.importDir(req.path, req.name, opts) : await core.options.images.importTar(req.path, req.name, opts);
  return toImageInfo(rec);
}

export async function pullImage(core: EngineCore, reference: string, options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
  const req = parse(PullImageApiRequest, { reference }, "image pull");
  const { registry } = parseRegistryRef(req.reference);
  const decision = evaluatePullPolicy(registry, await core.gate.policy());
  if (!decision.ok) {
    await recordImageRefusal(core, decision.rule, "pull", req.reference);
    throw new PolicyRuleDeniedError(decision.rule, `Pull of "${req.reference}" denied by policy rule "${decision.rule}": ${decision.message}`);
  }
  const signal = callSignal(options);
  const credentials = await loadRegistryCredentials(registry, { stateDir: core.stateDir });
  const rec = await core.options.images.pull(req.reference, {
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(signal ? { signal } : {}),
    ...(credentials !== undefined ? { credentials } : {}),
  });
  return toImageInfo(rec);
}

export async function removeImage(core: EngineCore, ref: string): Promise<void> {
  await core.options.images.remove(ref);
}

export async function inspectImage(core: EngineCore, ref: string): Promise<ImageInspect> {
  const images = core.options.images;
  const rec = await images.resolve(ref);
  if (!rec) throw new NotFoundError(`Image ${JSON.stringify(ref.slice(0, 200))} not found`, { hint: "list stored images with: mvmctl image ls" });
  let provenance: ImageProvenanceStatus;
  try {
    const checked = await verifyProvenance(core.stateDir, rec.digest, { imagesDir: images.root });
    provenance = { status: "verified", digest: checked.digest, keyId: checked.keyId, record: checked.provenance };
  } catch (err) {
    if (err instanceof NotFoundError) provenance = { status: "none" };
    else if (err instanceof MvmError) provenance = { status: "invalid", reason: err.message.slice(0, 1024) };
    else throw err;
  }
  return { ...toImageInfo(rec), source: rec.source, provenance };
}

function toImageInfo(rec: ImageRecord): ImageInfo {
  const info: ImageInfo = { digest: rec.digest, refs: rec.refs, sizeBytes: rec.sizeBytes, createdAt: rec.createdAt };
  if (rec.oci) {
    const { manifestDigest, configDigest, reference, defaults } = rec.oci;
    info.oci = { configDigest: configDigest as Sha256Digest, ...(manifestDigest ? { manifestDigest: manifestDigest as Sha256Digest } : {}), ...(reference !== undefined ? { reference } : {}) };
    if (defaults.user !== undefined) info.oci.user = defaults.user;
    if (defaults.entrypoint !== undefined) info.oci.entrypoint = [...defaults.entrypoint];
    if (defaults.cmd !== undefined) info.oci.cmd = [...defaults.cmd];
  }
  return info;
}
