/**
 * envd's filesystem service (`filesystem.Filesystem`) on mvm's engine: Stat, ListDir (with
 * depth), MakeDir, Move, Remove, WatchDir (streamed) and the polled watchers (CreateWatcher,
 * GetWatcherEvents, RemoveWatcher). Watches use the SDK's `files.watch`, so their events are
 * bounded and checked there; a watch that lost events ends with `data_loss` instead of hiding it.
 */
import { randomBytes } from "node:crypto";
import { posix } from "node:path";
import { z } from "zod";
import { isSandboxPath, type EngineApi, type FileInfo } from "@mvm/protocol";
import { Sandbox, type FileWatcher, type WatchEvent } from "@mvm/sdk";
import { ConnectError, type ServerStream } from "./connect.js";
import type { EnvdCall } from "./envd-process.js";

/** Where relative paths start, as in E2B templates: the user's home. */
export const HOME_DIR = "/home/user";
/** Most entries one ListDir returns, all depths together. */
export const MAX_LIST_ENTRIES = 10_000;
/** Most polled watchers open at once, and events each keeps until read. */
export const MAX_WATCHERS = 64;
const MAX_WATCHER_EVENTS = 1024;

const Path = z.string().min(1).max(4096);
const WatchOptions = {
  path: Path,
  recursive: z.boolean().optional(),
  includeEntry: z.boolean().optional(),
  allowNetworkMounts: z.boolean().optional(),
};
export const PathRequest = z.strictObject({ path: Path });
export const ListDirRequest = z.strictObject({ path: Path, depth: z.number().int().min(0).max(64).optional() });
export const MoveRequest = z.strictObject({ source: Path, destination: Path });
export const WatchDirRequest = z.strictObject(WatchOptions);
export const WatcherIdRequest = z.strictObject({ watcherId: z.string().max(64) });

/** An absolute, normal sandbox path for what the client sent (relative paths start at HOME_DIR). */
export function sandboxPath(path: string): string {
  const abs = posix.resolve(HOME_DIR, path);
  if (!isSandboxPath(abs)) throw new ConnectError("invalid_argument", `Invalid path "${path.slice(0, 200)}"`);
  return abs;
}

const TYPES = { file: "FILE_TYPE_FILE", dir: "FILE_TYPE_DIRECTORY", symlink: "FILE_TYPE_SYMLINK", other: "FILE_TYPE_UNSPECIFIED" } as const;

function permissions(type: FileInfo["type"], mode: number): string {
  const bits = "rwxrwxrwx";
  let s = type === "dir" ? "d" : type === "symlink" ? "L" : "-";
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? bits[i] : "-";
  return s;
}

/** envd's EntryInfo for a file the engine described. */
export function entryInfo(path: string, info: FileInfo): Record<string, unknown> {
  return {
    name: posix.basename(path) || info.name,
    type: TYPES[info.type],
    path,
    size: String(info.size),
    mode: info.mode,
    permissions: permissions(info.type, info.mode),
    modifiedTime: new Date(info.mtimeMs).toISOString(),
  };
}

const EVENT_TYPES = { create: "EVENT_TYPE_CREATE", write: "EVENT_TYPE_WRITE", remove: "EVENT_TYPE_REMOVE" } as const;

function eventOf(root: string, event: Exclude<WatchEvent, { type: "overflow" }>): Record<string, unknown> {
  return { name: posix.relative(root, event.path), type: EVENT_TYPES[event.type] };
}

async function startWatch(call: EnvdCall, raw: unknown): Promise<{ watcher: FileWatcher; root: string }> {
  const msg = WatchDirRequest.parse(raw);
  if (msg.includeEntry === true) throw new ConnectError("unimplemented", "Watch events with entry info are not supported by mvm");
  const root = sandboxPath(msg.path);
  const sb = await Sandbox.connect(call.sandboxId, { engine: call.engine });
  return { watcher: await sb.files.watch(root, { recursive: msg.recursive ?? false }), root };
}

interface PolledWatcher {
  sandboxId: string;
  watcher: FileWatcher;
  events: Record<string, unknown>[];
  failure: ConnectError | undefined;
}

/** The filesystem service of one server. */
export class FilesystemService {
  readonly #watchers = new Map<string, PolledWatcher>();

  async stat(call: EnvdCall, raw: unknown): Promise<unknown> {
    const path = sandboxPath(PathRequest.parse(raw).path);
    return { entry: entryInfo(path, await call.engine.stat(call.sandboxId, path, { signal: call.signal })) };
  }

  async listDir(call: EnvdCall, raw: unknown): Promise<unknown> {
    const msg = ListDirRequest.parse(raw);
    const root = sandboxPath(msg.path);
    const depth = Math.max(msg.depth ?? 1, 1);
    const entries: Record<string, unknown>[] = [];
    let level = [root];
    for (let d = 1; d <= depth && level.length > 0; d++) {
      const next: string[] = [];
      for (const dir of level) {
        const listing = await call.engine.listDir(call.sandboxId, dir, { signal: call.signal });
        for (const e of listing.entries) {
          if (entries.length >= MAX_LIST_ENTRIES) throw new ConnectError("resource_exhausted", `More than ${MAX_LIST_ENTRIES} entries under "${root}": ask for less depth`);
          const path = posix.join(dir, e.name);
          entries.push(entryInfo(path, e));
          if (e.type === "dir") next.push(path);
        }
      }
      level = next;
    }
    return { entries };
  }

  async makeDir(call: EnvdCall, raw: unknown): Promise<unknown> {
    const path = sandboxPath(PathRequest.parse(raw).path);
    const exists = await call.engine.stat(call.sandboxId, path, { signal: call.signal }).then(
      () => true,
      () => false,
    );
    if (exists) throw new ConnectError("already_exists", `"${path}" already exists`);
    await call.engine.mkdir(call.sandboxId, path, true, { signal: call.signal });
    return { entry: entryInfo(path, await call.engine.stat(call.sandboxId, path, { signal: call.signal })) };
  }

  async move(call: EnvdCall, raw: unknown): Promise<unknown> {
    const msg = MoveRequest.parse(raw);
    const from = sandboxPath(msg.source);
    const to = sandboxPath(msg.destination);
    await call.engine.rename(call.sandboxId, from, to, { signal: call.signal });
    return { entry: entryInfo(to, await call.engine.stat(call.sandboxId, to, { signal: call.signal })) };
  }

  async remove(call: EnvdCall, raw: unknown): Promise<unknown> {
    const path = sandboxPath(PathRequest.parse(raw).path);
    await call.engine.remove(call.sandboxId, path, true, { signal: call.signal });
    return {};
  }

  /** `WatchDir`: a start message, then one message per change until the client goes away. */
  async watchDir(call: EnvdCall, raw: unknown, stream: ServerStream): Promise<void> {
    const { watcher, root } = await startWatch(call, raw);
    const close = (): void => void watcher.close();
    call.signal.addEventListener("abort", close, { once: true });
    const timer = call.keepaliveSeconds === undefined ? undefined : setInterval(() => void stream.send({ keepalive: {} }), Math.min(Math.max(call.keepaliveSeconds, 1), 300) * 1000);
    timer?.unref();
    try {
      await stream.send({ start: {} });
      for await (const event of watcher) {
        if (event.type === "overflow") throw new ConnectError("data_loss", `Events under "${root}" were lost: list the directory again`);
        await stream.send({ filesystem: eventOf(root, event) });
        if (stream.closed) break;
      }
      stream.end();
    } catch (err) {
      stream.end(err);
    } finally {
      if (timer !== undefined) clearInterval(timer);
      call.signal.removeEventListener("abort", close);
      await watcher.close();
    }
  }

  async createWatcher(call: EnvdCall, raw: unknown): Promise<unknown> {
    if (this.#watchers.size >= MAX_WATCHERS) throw new ConnectError("resource_exhausted", `${MAX_WATCHERS} watchers are open: remove one first`);
    const { watcher, root } = await startWatch(call, raw);
    const id = `w_${randomBytes(8).toString("hex")}`;
    const entry: PolledWatcher = { sandboxId: call.sandboxId, watcher, events: [], failure: undefined };
    this.#watchers.set(id, entry);
    void (async () => {
      try {
        for await (const event of watcher) {
          if (event.type === "overflow" || entry.events.length >= MAX_WATCHER_EVENTS) {
            entry.failure = new ConnectError("data_loss", `Events under "${root}" were lost: list the directory again`);
            break;
          }
          entry.events.push(eventOf(root, event));
        }
      } catch (err) {
        entry.failure = err instanceof ConnectError ? err : new ConnectError("unavailable", "The watcher ended");
      } finally {
        await watcher.close();
      }
    })();
    return { watcherId: id };
  }

  #watcher(call: EnvdCall, raw: unknown): [string, PolledWatcher] {
    const id = WatcherIdRequest.parse(raw).watcherId;
    const entry = this.#watchers.get(id);
    if (entry === undefined || entry.sandboxId !== call.sandboxId) throw new ConnectError("not_found", `No watcher "${id}"`);
    return [id, entry];
  }

  async getWatcherEvents(call: EnvdCall, raw: unknown): Promise<unknown> {
    const [, entry] = this.#watcher(call, raw);
    const events = entry.events.splice(0);
    if (events.length === 0 && entry.failure !== undefined) throw entry.failure;
    return { events };
  }

  async removeWatcher(call: EnvdCall, raw: unknown): Promise<unknown> {
    const [id, entry] = this.#watcher(call, raw);
    this.#watchers.delete(id);
    await entry.watcher.close();
    return {};
  }

  /** Stops every watcher (server shutdown). */
  async close(): Promise<void> {
    const all = [...this.#watchers.values()];
    this.#watchers.clear();
    await Promise.allSettled(all.map((w) => w.watcher.close()));
  }
}

/** The engine type re-exported for the server's wiring. */
export type { EngineApi };
