/** Method + path matching for the daemon API, with typed path parameters. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { InvalidArgumentError, NotFoundError, SandboxIdSchema, type EngineApi } from "@mvm/protocol";
import { HttpError } from "./http-io.js";
import type { PeerCredentials } from "./peer-cred.js";

export interface RouteContext {
  readonly engine: EngineApi;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** Path parameters by name (`:id` → `params.id`), still unvalidated. */
  readonly params: Readonly<Record<string, string>>;
  readonly query: URLSearchParams;
  /** Aborts when the client goes away before the answer is complete, or the server closes. */
  readonly signal: AbortSignal;
  /** Who sent the request (already admitted), as the kernel recorded it at connect(). */
  readonly peer: PeerCredentials;
  /** True when the peer has the daemon's own privileges (root or the daemon's uid). */
  readonly peerPrivileged: boolean;
}

export type Handler = (ctx: RouteContext) => Promise<void>;

export interface Route {
  readonly method: "GET" | "POST" | "PUT" | "DELETE";
  /** e.g. "/v1/sandboxes/:id/exec" */
  readonly pattern: string;
  readonly handler: Handler;
}

export interface RouteMatch {
  readonly handler: Handler;
  readonly params: Record<string, string>;
}

/** Finds the route for a request. @throws NotFoundError (no such path) or HttpError 405 (wrong method) */
export function matchRoute(routes: readonly Route[], method: string, pathname: string): RouteMatch {
  const segments = pathname.split("/").slice(1);
  let pathMatched = false;
  for (const route of routes) {
    const params = matchPattern(route.pattern, segments);
    if (params === undefined) continue;
    pathMatched = true;
    if (route.method === method) return { handler: route.handler, params };
  }
  if (pathMatched) throw new HttpError(405, `Method "${method}" is not allowed on "${pathname.slice(0, 256)}"`);
  throw new NotFoundError(`No API route "${pathname.slice(0, 256)}"`);
}

function matchPattern(pattern: string, segments: string[]): Record<string, string> | undefined {
  const parts = pattern.split("/").slice(1);
  if (parts.length !== segments.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    const seg = segments[i] as string;
    if (part.startsWith(":")) {
      let value: string;
      try {
        value = decodeURIComponent(seg);
      } catch {
        return undefined;
      }
      if (value === "") return undefined;
      params[part.slice(1)] = value;
    } else if (part !== seg) {
      return undefined;
    }
  }
  return params;
}

/** The `:id` parameter, checked to be a sandbox id. */
export function sandboxIdParam(ctx: RouteContext): string {
  const id = ctx.params.id ?? "";
  if (!SandboxIdSchema.safeParse(id).success) throw new InvalidArgumentError(`Invalid sandbox id "${id.slice(0, 64)}"`);
  return id;
}

/** The `:proc` parameter, checked to be a process handle (u32). */
export function procParam(ctx: RouteContext): number {
  const raw = ctx.params.proc ?? "";
  const proc = /^[0-9]{1,10}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isInteger(proc) || proc > 0xffff_ffff) throw new InvalidArgumentError(`Invalid process handle "${raw.slice(0, 32)}"`);
  return proc;
}
