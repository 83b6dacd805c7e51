/** Pieces the daemon's tests share: one peer-credential helper build, and a stub engine. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InternalError, type EngineApi } from "@mvm/protocol";
import { buildPeerCredHelper } from "./peer-cred.js";

let dir: string | undefined;
let helper: Promise<string> | undefined;

/** The peer-credential helper, built once per test file into a temp dir (`removePeerHelper` ends it). */
export function peerHelper(): Promise<string> {
  helper ??= (async () => {
    dir = await mkdtemp(join(tmpdir(), "mvm-peercred-"));
    return buildPeerCredHelper(dir);
  })();
  return helper;
}

/** Removes the helper `peerHelper` built; for a test file's `after`. */
export async function removePeerHelper(): Promise<void> {
  await helper?.catch(() => undefined);
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  dir = undefined;
  helper = undefined;
}

/** An engine whose methods are `overrides`; any other call fails with InternalError. */
export function stubEngine(overrides: Partial<EngineApi> = {}): EngineApi {
  const unused = async (): Promise<never> => {
    throw new InternalError("Not used by this test");
  };
  return new Proxy(overrides as EngineApi, { get: (target, key) => (target as unknown as Record<PropertyKey, unknown>)[key] ?? unused });
}
