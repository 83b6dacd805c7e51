/**
 * The request handlers, one per op. `shutdown` and `quiesce` are handled by the session itself.
 */
import type { Op, RequestOf, ResultOf } from "@mvm/protocol";
import type { RequestContext } from "./context.js";
import { readFile, writeFile } from "./files.js";
import { listDir, mkdir, remove, rename, stat } from "./fsops.js";

export type Handler<O extends Op> = (req: RequestOf<O>, ctx: RequestContext) => Promise<ResultOf<O>> | ResultOf<O>;

export const HANDLERS: { readonly [O in Exclude<Op, "shutdown" | "quiesce">]: Handler<O> } = {
  exec: (req, ctx) => ctx.procs.start(req),
  signal: (req, ctx) => ctx.procs.signal(req),
  resize: (req, ctx) => ctx.procs.resize(req),
  listProcesses: (_req, ctx) => ctx.procs.list(),
  readFile,
  writeFile,
  listDir,
  stat,
  mkdir,
  remove,
  rename,
  ping: () => ({}),
};
