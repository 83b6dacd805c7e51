/**
 * Routes for snapshots: take one of a sandbox, fork a sandbox, and list, inspect and delete them.
 * Taking a snapshot and forking run as long as their work does; like create, they answer with an
 * NDJSON stream (headers at once, then one `result` or `error` line) when the client asks for one.
 */
import { ForkApiRequest, InvalidArgumentError, SnapshotApiRequest, SnapshotRefSchema } from "@mvm/protocol";
import { readJson, sendJson, sendNoContent, wireErrorOf } from "./http-io.js";
import { NdjsonWriter, wantsNdjson } from "./ndjson.js";
import { sandboxIdParam, type Route, type RouteContext } from "./router.js";

export const snapshotRoutes: readonly Route[] = [
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/snapshots",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, SnapshotApiRequest);
      await answer(ctx, async () => ({ snapshot: await ctx.engine.snapshotSandbox(id, body, { signal: ctx.signal }) }), (r) => r.snapshot);
    },
  },
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/fork",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, ForkApiRequest);
      await answer(ctx, async () => ({ sandboxes: await ctx.engine.forkSandbox(id, body, { signal: ctx.signal }) }), (r) => r);
    },
  },
  {
    method: "GET",
    pattern: "/v1/snapshots",
    handler: async (ctx) => sendJson(ctx.res, 200, { snapshots: await ctx.engine.listSnapshots({ signal: ctx.signal }) }),
  },
  {
    method: "GET",
    pattern: "/v1/snapshots/:ref",
    handler: async (ctx) => sendJson(ctx.res, 200, await ctx.engine.getSnapshot(snapshotRefParam(ctx), { signal: ctx.signal })),
  },
  {
    method: "DELETE",
    pattern: "/v1/snapshots/:ref",
    handler: async (ctx) => {
      await ctx.engine.deleteSnapshot(snapshotRefParam(ctx), { signal: ctx.signal });
      sendNoContent(ctx.res);
    },
  },
];

/**
 * Runs `work` and answers 201 with `json(result)`; with `Accept: application/x-ndjson`, answers
 * 200 at once and then one line, `{type: "result", ...result}` or `{type: "error", error}`.
 */
export async function answer<T extends object>(ctx: RouteContext, work: () => Promise<T>, json: (result: T) => unknown): Promise<void> {
  if (!wantsNdjson(ctx.req.headers.accept)) {
    sendJson(ctx.res, 201, json(await work()));
    return;
  }
  const out = new NdjsonWriter(ctx.res);
  out.start();
  try {
    out.line({ type: "result", ...(await work()) });
  } catch (err) {
    out.line({ type: "error", error: wireErrorOf(err) });
  }
  out.end();
}

/** The `:ref` parameter, checked to be a snapshot id (`snap_…`) or digest (`sha256:…`). */
function snapshotRefParam(ctx: RouteContext): string {
  const ref = ctx.params.ref ?? "";
  if (!SnapshotRefSchema.safeParse(ref).success) throw new InvalidArgumentError(`Invalid snapshot reference "${ref.slice(0, 80)}"`);
  return ref;
}
