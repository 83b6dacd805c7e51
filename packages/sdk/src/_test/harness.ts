/**
 * Test harness: a real daemon server (from the engine package) serving a FakeEngine on a Unix
 * socket in a fresh private directory, and a DaemonClient connected to it.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
// The daemon server is engine code: transport tests use it through the engine's public entry point.
import { startDaemonServer } from "@mvm/engine";
import type { EngineApi } from "@mvm/protocol";
import { DaemonClient, type DaemonClientOptions } from "../daemon-client.js";
import { FakeEngine } from "./fake-engine.js";

export type DaemonServer = Awaited<ReturnType<typeof startDaemonServer>>;

export interface FakeDaemon {
  engine: FakeEngine;
  server: DaemonServer;
  client: DaemonClient;
  socketPath: string;
  dir: string;
}

export interface TestContextLike {
  after(fn: () => Promise<void> | void): void;
}

export async function scratchDir(t: TestContextLike, prefix = "mvm-sdk-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts the daemon over a FakeEngine; everything is closed after the test. */
export async function startFakeDaemon(t: TestContextLike, clientOptions: Omit<DaemonClientOptions, "socketPath"> = {}): Promise<FakeDaemon> {
  const dir = await scratchDir(t);
  const socketPath = join(dir, "run", "mvmd.sock");
  const engine = new FakeEngine();
  const server = await startDaemonServer({ engine, socketPath });
  const client = new DaemonClient({ ...clientOptions, socketPath });
  t.after(async () => {
    await client.close();
    await server.close();
    await engine.close();
  });
  return { engine, server, client, socketPath, dir };
}

/** Resolves with the first event `name` emitted by `engine.events` that satisfies `match`. */
export function nextEvent<T>(engine: FakeEngine, name: string, match: (e: T) => boolean = () => true): Promise<T> {
  return new Promise((resolve) => {
    const on = (e: T): void => {
      if (!match(e)) return;
      engine.events.off(name, on);
      resolve(e);
    };
    engine.events.on(name, on);
  });
}

/** The two ways the SDK's cases reach an engine: over the daemon (full transport), or in-process. */
export const VIAS = ["daemon", "in-process"] as const;

/** A fake engine reached `via` the daemon or directly; `fake` is the engine behind it either way. */
export async function engineVia(t: TestContextLike, via: (typeof VIAS)[number]): Promise<{ engine: EngineApi; fake: FakeEngine }> {
  if (via === "daemon") {
    const d = await startFakeDaemon(t);
    return { engine: d.client, fake: d.engine };
  }
  const fake = new FakeEngine();
  return { engine: fake, fake };
}
