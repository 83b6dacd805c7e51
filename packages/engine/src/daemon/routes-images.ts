/** Routes for the image store. */
import { BuildImageApiRequest, ImageRefSchema, ImportImageApiRequest, PullImageApiRequest, type ProgressEvent } from "@mvm/protocol";
import { check, readJson, requiredParam, sendJson, sendNoContent, wireErrorOf } from "./http-io.js";
import { hostPathAsCaller } from "./host-read.js";
import { NdjsonWriter, wantsNdjson } from "./ndjson.js";
import type { Route, RouteContext } from "./router.js";

export const imageRoutes: readonly Route[] = [
  {
    method: "GET",
    pattern: "/v1/images",
    handler: async (ctx) => sendJson(ctx.res, 200, { images: await ctx.engine.listImages({ signal: ctx.signal }) }),
  },
  { method: "POST", pattern: "/v1/images/build", handler: buildImage },
  {
    method: "GET",
    pattern: "/v1/images/inspect",
    handler: async (ctx) => {
      const ref = check(ImageRefSchema, requiredParam(ctx.query, "ref"), 'Query parameter "ref"');
      sendJson(ctx.res, 200, await ctx.engine.inspectImage(ref, { signal: ctx.signal }));
    },
  },
  { method: "POST", pattern: "/v1/images/import", handler: importImage },
  { method: "POST", pattern: "/v1/images/pull", handler: pullImage },
  {
    method: "DELETE",
    pattern: "/v1/images",
    handler: async (ctx) => {
      const ref = check(ImageRefSchema, requiredParam(ctx.query, "ref"), 'Query parameter "ref"');
      await ctx.engine.removeImage(ref, { signal: ctx.signal });
      sendNoContent(ctx.res);
    },
  },
];

/**
 * Imports a host directory or tarball, read with the caller's own permissions (see host-read.ts);
 * streams progress like a build.
 */
async function importImage(ctx: RouteContext): Promise<void> {
  const body = await readJson(ctx.req, ImportImageApiRequest);
  const prefix = /^(?:oci-layout|docker-archive):/.exec(body.path)?.[0] ?? "";
  await using source = await hostPathAsCaller(body.path.slice(prefix.length), ctx.peer, ctx.peerPrivileged, { signal: ctx.signal });
  const path = prefix + source.path;
  const { name } = body;
  if (!wantsNdjson(ctx.req.headers.accept)) {
    sendJson(ctx.res, 200, await ctx.engine.importImage(path, name, { signal: ctx.signal }));
    return;
  }
  const out = new NdjsonWriter(ctx.res);
  out.start();
  try {
    const onProgress = (event: ProgressEvent): void => out.line({ type: "progress", event });
    out.line({ type: "result", image: await ctx.engine.importImage(path, name, { signal: ctx.signal, onProgress }) });
  } catch (err) {
    out.line({ type: "error", error: wireErrorOf(err) });
  }
  out.end();
}

/** Pulls an image from a registry; streams progress like a build. */
async function pullImage(ctx: RouteContext): Promise<void> {
  const { reference } = await readJson(ctx.req, PullImageApiRequest);
  if (!wantsNdjson(ctx.req.headers.accept)) {
    sendJson(ctx.res, 200, await ctx.engine.pullImage(reference, { signal: ctx.signal }));
    return;
  }
  const out = new NdjsonWriter(ctx.res);
  out.start();
  try {
    const onProgress = (event: ProgressEvent): void => out.line({ type: "progress", event });
    out.line({ type: "result", image: await ctx.engine.pullImage(reference, { signal: ctx.signal, onProgress }) });
  } catch (err) {
    out.line({ type: "error", error: wireErrorOf(err) });
  }
  out.end();
}

/** Builds (or resolves) an image; with `Accept: application/x-ndjson` streams progress lines first. */
async function buildImage(ctx: RouteContext): Promise<void> {
  const { ref, force } = await readJson(ctx.req, BuildImageApiRequest);
  const base = { signal: ctx.signal, ...(force === undefined ? {} : { force }) };
  if (!wantsNdjson(ctx.req.headers.accept)) {
    sendJson(ctx.res, 200, await ctx.engine.buildImage(ref, base));
    return;
  }
  const out = new NdjsonWriter(ctx.res);
  out.start();
  try {
    const onProgress = (event: ProgressEvent): void => out.line({ type: "progress", event });
    const image = await ctx.engine.buildImage(ref, { ...base, onProgress });
    out.line({ type: "result", image });
  } catch (err) {
    out.line({ type: "error", error: wireErrorOf(err) });
  }
  out.end();
}
