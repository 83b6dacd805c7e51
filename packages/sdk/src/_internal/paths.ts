/** Request paths and JSON bodies of the daemon API. */

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
