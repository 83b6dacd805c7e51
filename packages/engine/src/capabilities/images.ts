/** Images: list, build, import, remove. */
import { stat } from "node:fs/promises";
import { ImportImageApiRequest, MvmError, NotFoundError, type CallOptions, type ImageInfo, type ImageInspect, type ImageProvenanceStatus, type ProgressEvent } from "@mvm/protocol";
import { verifyProvenance } from "../images/provenance.js";
import { callSignal } from "../_internal/signals.js";
import { parse, type EngineCore } from "./core.js";

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
  const st = await stat(req.path).catch((err: unknown) => {
    throw new NotFoundError(`Cannot import "${req.path}": it does not exist`, { cause: err });
  });
  const rec = st.isDirectory() ? await core.options.images.importDir(req.path, req.name, opts) : await core.options.images.importTar(req.path, req.name, opts);
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

function toImageInfo(rec: { digest: string; refs: string[]; sizeBytes: number; createdAt: string }): ImageInfo {
  return { digest: rec.digest as ImageInfo["digest"], refs: rec.refs, sizeBytes: rec.sizeBytes, createdAt: rec.createdAt };
}
