/** Routes for a sandbox's egress policy and network events, and for the host's secret store. */
import { InvalidArgumentError, LogCursor, LogSource, NetworkPolicySchema, PortSpec, SECRET_NAME_PATTERN, SetSecretApiRequest } from "@mvm/protocol";
import { readJson, sendJson, sendNoContent } from "./http-io.js";
import { sandboxIdParam, type Route, type RouteContext } from "./router.js";


export const networkRoutes: readonly Route[] = [
  {
    method: "PUT",
    pattern: "/v1/sandboxes/:id/network/policy",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const policy = await readJson(ctx.req, NetworkPolicySchema);
      sendJson(ctx.res, 200, await ctx.engine.setNetworkPolicy(id, policy, { signal: ctx.signal }));
    },
  },
  {
    method: "GET",
    pattern: "/v1/sandboxes/:id/logs",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const source = ctx.query.get("source");
      const tail = ctx.query.get("tail");
      if (source !== null && !LogSource.safeParse(source).success) throw new InvalidArgumentError(`Query parameter "source" must be agent or workload, not "${source.slice(0, 32)}"`);
      if (tail !== null && !/^[0-9]{1,9}$/.test(tail)) throw new InvalidArgumentError(`Query parameter "tail" must be a whole number, not "${tail.slice(0, 32)}"`);
      const after = ctx.query.get("after");
      if (after !== null && !LogCursor.safeParse(after).success) throw new InvalidArgumentError(`Query parameter "after" must be the "next" of an earlier logs answer, not "${after.slice(0, 40)}"`);
      sendJson(
        ctx.res,
        200,
        await ctx.engine.sandboxLogs(id, {
          signal: ctx.signal,
          ...(source !== null ? { source: source as LogSource } : {}),
          ...(tail !== null ? { tail: Number(tail) } : {}),
          ...(after !== null ? { after } : {}),
        }),
      );
    },
  },
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/ports",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const port = await readJson(ctx.req, PortSpec);
      sendJson(ctx.res, 200, await ctx.engine.publishPort(id, port, { signal: ctx.signal }));
    },
  },
  {
    method: "GET",
    pattern: "/v1/sandboxes/:id/network/events",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const after = intParam(ctx, "after");
      const limit = intParam(ctx, "limit");
      sendJson(
        ctx.res,
        200,
        await ctx.engine.networkEvents(id, {
          signal: ctx.signal,
          ...(after !== undefined ? { after } : {}),
          ...(limit !== undefined ? { limit } : {}),
        }),
      );
    },
  },
  { method: "GET", pattern: "/v1/secrets", handler: async (ctx) => sendJson(ctx.res, 200, { secrets: await ctx.engine.listSecrets({ signal: ctx.signal }) }) },
  {
    method: "PUT",
    pattern: "/v1/secrets/:name",
    handler: async (ctx) => {
      const name = secretNameParam(ctx);
      const body = await readJson(ctx.req, SetSecretApiRequest);
      sendJson(ctx.res, 200, await ctx.engine.setSecret(name, body.value, { signal: ctx.signal, ...(body.hosts ? { hosts: body.hosts } : {}) }));
    },
  },
  {
    method: "DELETE",
    pattern: "/v1/secrets/:name",
    handler: async (ctx) => {
      await ctx.engine.removeSecret(secretNameParam(ctx), { signal: ctx.signal });
      sendNoContent(ctx.res);
    },
  },
];

function secretNameParam(ctx: RouteContext): string {
  const name = ctx.params.name ?? "";
  if (!SECRET_NAME_PATTERN.test(name)) throw new InvalidArgumentError(`Invalid secret name "${name.slice(0, 128)}"`);
  return name;
}

function intParam(ctx: RouteContext, name: string): number | undefined {
  const raw = ctx.query.get(name);
  if (raw === null) return undefined;
  if (!/^[0-9]{1,15}$/.test(raw)) throw new InvalidArgumentError(`Invalid query parameter "${name}": ${JSON.stringify(raw.slice(0, 32))}`);
  return Number(raw);
}
