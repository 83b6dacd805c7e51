/** Routes for snapshots: take one of a sandbox, fork a sandbox, and list, inspect and delete them. */
import { ForkApiRequest, InvalidArgumentError, SnapshotApiRequest, SnapshotRefSchema } from "@mvm/protocol";
import { readJson, sendJson, sendNoContent } from "./http-io.js";
import { sandboxIdParam, type Route, type RouteContext } from "./router.js";

export const snapshotRoutes: readonly Route[] = [
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/snapshots",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, SnapshotApiRequest);
      sendJson(ctx.res, 201, await ctx.engine.snapshotSandbox(id, body, { signal: ctx.signal }));
    },
  },
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/fork",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, ForkApiRequest);
      sendJson(ctx.res, 201, { sandboxes: await ctx.engine.forkSandbox(id, body, { signal: ctx.signal }) });
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

/** The `:ref` parameter, checked to be a snapshot id (`snap_…`) or digest (`sha256:…`). */
function snapshotRefParam(ctx: RouteContext): string {
  const ref = ctx.params.ref ?? "";
  if (!SnapshotRefSchema.safeParse(ref).success) throw new InvalidArgumentError(`Invalid snapshot reference "${ref.slice(0, 80)}"`);
  return ref;
}
