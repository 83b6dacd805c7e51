/** Request paths and JSON bodies of the daemon API. */
import { InvalidArgumentError, SnapshotRefSchema } from "@mvm/protocol";

export function jsonBody(value: unknown): { headers: Record<string, string>; body: Uint8Array } {
  const body = Buffer.from(JSON.stringify(value));
  return { headers: { "Content-Type": "application/json", "Content-Length": String(body.byteLength) }, body };
}

export function sandboxPath(id: string): string {
  return `/v1/sandboxes/${encodeURIComponent(id)}`;
}

export function processPath(id: string, proc: number): string {
  return `${sandboxPath(id)}/processes/${encodeURIComponent(String(proc))}`;
}

export function filesPath(id: string, leaf: string, query?: Record<string, string>): string {
  return `${sandboxPath(id)}/files/${leaf}${query ? `?${new URLSearchParams(query)}` : ""}`;
}

/** `/v1/snapshots/<ref>`; a ref that is not a snapshot id or digest is refused before anything is sent. */
export function snapshotPath(ref: string): string {
  if (!SnapshotRefSchema.safeParse(ref).success) {
    throw new InvalidArgumentError(`Invalid snapshot reference "${String(ref).slice(0, 80)}": expected snap_<20 base32 characters> or sha256:<64 hex>`);
  }
  return `/v1/snapshots/${encodeURIComponent(ref)}`;
}
