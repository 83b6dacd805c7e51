/** Snapshots: take, list, delete; create from one; fork a running sandbox. Being built: each call is refused until it is. */
import {
  NotFoundError,
  UnsupportedCapabilityError,
  type CallOptions,
  type CreateSandboxRequest,
  type ForkApiRequest,
  type ProgressEvent,
  type SandboxInfo,
  type SignedPlan,
  type SnapshotApiRequest,
  type SnapshotInfo,
} from "@mvm/protocol";
import type { PlanOptions } from "../engine.js";
import type { EngineCore } from "./core.js";

export async function openSnapshots(_core: EngineCore): Promise<void> {}

export async function snapshotSandbox(_core: EngineCore, _id: string, _request: SnapshotApiRequest, _options: CallOptions): Promise<SnapshotInfo> {
  throw new UnsupportedCapabilityError("Snapshots are not available yet");
}
export async function forkSandbox(_core: EngineCore, _id: string, _request: ForkApiRequest, _options: CallOptions): Promise<SandboxInfo[]> {
  throw new UnsupportedCapabilityError("Fork is not available yet");
}
export async function planFromSnapshot(_core: EngineCore, _request: CreateSandboxRequest, _options: PlanOptions): Promise<SignedPlan> {
  throw new UnsupportedCapabilityError("Snapshots are not available yet");
}
export async function createFromSnapshot(_core: EngineCore, _request: CreateSandboxRequest, _options: CallOptions & { onProgress?: (event: ProgressEvent) => void }): Promise<SandboxInfo> {
  throw new UnsupportedCapabilityError("Snapshots are not available yet");
}
export async function listSnapshots(_core: EngineCore): Promise<SnapshotInfo[]> {
  return [];
}
export async function getSnapshot(_core: EngineCore, ref: string): Promise<SnapshotInfo> {
  throw new NotFoundError(`Snapshot "${ref}" not found`);
}
export async function deleteSnapshot(_core: EngineCore, ref: string): Promise<void> {
  throw new NotFoundError(`Snapshot "${ref}" not found`);
}
