/**
 * `mvmctl snapshot create|ls|inspect|rm` and `mvmctl fork`: a sandbox's state kept in the host's
 * snapshot store, and sandboxes started from a sandbox's current state.
 */
import { MAX_FORK_COUNT, MAX_SNAPSHOT_TTL_SECONDS, SnapshotApiRequest, type SnapshotInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { booleanFlag, integerFlag, keyValueFlag, sandboxIdArg, snapshotRefArg } from "../flags.js";
import { formatErrorLines, reportOf } from "../output.js";
import { formatBytes, formatTable, printable } from "../text.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

/** Bytes a snapshot keeps in the store (zero chunks elided, before dedup with other snapshots). */
function storedBytes(s: SnapshotInfo): number {
  return Object.values(s.sizes).reduce((n, part) => n + (part?.storedBytes ?? 0), 0);
}

/** "until <time>" for a TTL, "until deleted" for manual retention. */
function keptUntil(s: SnapshotInfo): string {
  return s.expiresAt !== undefined ? `until ${s.expiresAt}` : "until deleted";
}

function describeSnapshot(s: SnapshotInfo): string {
  const lines = [
    ["id", s.id],
    ["digest", s.digest],
    ["created", s.createdAt],
    ["kept", "ttlSeconds" in s.retention ? `${keptUntil(s)} (TTL ${s.retention.ttlSeconds} s)` : "until deleted (manual)"],
    ["tier", s.tier],
    ["memory", s.memory ? "yes: running processes continue after a restore" : "no: files only (/work, /tmp)"],
    ["source", s.source],
    ["image", s.image.digest],
  ];
  for (const [name, part] of Object.entries(s.sizes)) {
    if (part === undefined) continue;
    lines.push([`size ${name}`, `${formatBytes(part.bytes)}, ${formatBytes(part.storedBytes)} stored in ${part.chunks} chunks (${part.zeroChunks} zero, not stored)`]);
  }
  for (const [k, v] of Object.entries(s.labels)) lines.push(["label", `${k}=${v}`]);
  return lines.map(([k, v]) => `${(k ?? "").padEnd(11)}${printable(v ?? "")}\n`).join("");
}

export interface SnapshotCreateOptions {
  id: string;
  request: SnapshotApiRequest;
}

export const snapshotCreateCommand = defineCommand<SnapshotCreateOptions>({
  name: "snapshot create",
  summary: "Snapshot a sandbox's state and print the snapshot's id",
  usage: "(--ttl SECONDS | --keep) [flags] ID",
  details:
    `Retention is explicit: --ttl removes the snapshot that long after it is taken (60 to ${MAX_SNAPSHOT_TTL_SECONDS} s),\n` +
    '--keep keeps it until "mvmctl snapshot rm". The sandbox keeps running.\n' +
    "VM tier: memory, devices and /work are captured (--memory, the default there), so running processes\n" +
    "continue in a sandbox started from it. Container tier: /work and /tmp (--no-memory, the default there;\n" +
    "--memory is refused). A sandbox given secrets in its environment (posture env) is refused unless\n" +
    "--include-env-secrets says their values may be kept in the snapshot. With --json the snapshot record is printed.",
  flags: {
    ttl: { type: "string", valueName: "SECONDS", description: "Remove the snapshot this long after it is taken" },
    keep: { type: "boolean", description: "Keep the snapshot until it is removed" },
    memory: { type: "boolean", description: "Capture process memory too (the VM tier's default)" },
    "no-memory": { type: "boolean", description: "Capture files only (the container tier's default)" },
    "include-env-secrets": { type: "boolean", description: "Allow a sandbox holding env-posture secrets; their values are kept in the snapshot" },
    label: { type: "string", multiple: true, valueName: "K=V", description: "Attach a label (repeatable)" },
  },
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse(raw) {
    const id = sandboxIdArg(raw.positionals[0] ?? "");
    const ttlSeconds = integerFlag(raw, "ttl");
    const keep = booleanFlag(raw, "keep");
    if (ttlSeconds === undefined && !keep) {
      throw new UsageError("A snapshot needs an explicit retention: --ttl SECONDS or --keep", {
        hint: "e.g. --ttl 86400 to keep it a day, or --keep to keep it until mvmctl snapshot rm",
      });
    }
    if (ttlSeconds !== undefined && keep) throw new UsageError("--ttl and --keep cannot be combined: choose one retention");
    if (booleanFlag(raw, "memory") && booleanFlag(raw, "no-memory")) throw new UsageError("--memory and --no-memory cannot be combined");
    const request: Record<string, unknown> = { retention: keep ? { manual: true } : { ttlSeconds } };
    if (booleanFlag(raw, "memory")) request.memory = true;
    if (booleanFlag(raw, "no-memory")) request.memory = false;
    if (booleanFlag(raw, "include-env-secrets")) request.includeEnvSecrets = true;
    const labels = keyValueFlag(raw, "label");
    if (labels !== undefined) request.labels = labels;
    const r = SnapshotApiRequest.safeParse(request);
    if (!r.success) {
      const issue = r.error.issues[0];
      const flag = issue?.path[0] === "labels" ? "--label" : "--ttl";
      const shown = flag === "--ttl" ? ` "${ttlSeconds}"` : issue?.path[1] !== undefined ? ` "${String(issue.path[1])}"` : "";
      const why = flag === "--ttl" ? `expected 60 to ${MAX_SNAPSHOT_TTL_SECONDS} seconds` : (issue?.message ?? "invalid");
      throw new UsageError(`Invalid value${shown} for ${flag}: ${why}`, { cause: r.error });
    }
    return { id, request: r.data };
  },
  async run(ctx, { id, request }) {
    return withEngine(ctx, async (engine) => {
      const snapshot = await engine.snapshotSandbox(id, request, { signal: ctx.signal });
      ctx.out.note(`snapshot ${snapshot.digest} of ${snapshot.source}: ${formatBytes(storedBytes(snapshot))} stored, kept ${keptUntil(snapshot)}`);
      ctx.out.human(`${snapshot.id}\n`);
      ctx.out.jsonResult(snapshot);
      return 0;
    });
  },
});

export const snapshotLsCommand = defineCommand<Record<string, never>>({
  name: "snapshot ls",
  summary: "List snapshots",
  usage: "",
  details: "SIZE is what the snapshot keeps in the store (zero chunks elided). With --json an array of snapshot records is printed.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "auto",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const snapshots = await engine.listSnapshots({ signal: ctx.signal });
      ctx.out.jsonResult(snapshots);
      if (!ctx.global.json) {
        const rows = snapshots.map((s) => [
          s.id,
          s.digest.slice(0, "sha256:".length + 12),
          s.tier,
          s.memory ? "yes" : "no",
          s.source,
          formatBytes(storedBytes(s)),
          s.createdAt,
          s.expiresAt ?? "manual",
          Object.entries(s.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(","),
        ]);
        ctx.out.human(formatTable(["ID", "DIGEST", "TIER", "MEMORY", "SOURCE", "SIZE", "CREATED", "EXPIRES", "LABELS"], rows));
      }
      return 0;
    });
  },
});

export const snapshotInspectCommand = defineCommand<{ ref: string }>({
  name: "snapshot inspect",
  summary: "Show a snapshot",
  usage: "REF",
  details: "REF is a snapshot id (snap_…) or digest (sha256:…). With --json the snapshot record is printed.",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => ({ ref: snapshotRefArg(raw.positionals[0] ?? "") }),
  async run(ctx, { ref }) {
    return withEngine(ctx, async (engine) => {
      const snapshot = await engine.getSnapshot(ref, { signal: ctx.signal });
      ctx.out.human(describeSnapshot(snapshot));
      ctx.out.jsonResult(snapshot);
      return 0;
    });
  },
});

/** One entry of `snapshot rm --json` output. */
export type SnapshotRmJsonEntry = { ref: string; ok: true } | { ref: string; ok: false; error: { code: string; message: string } };

export const snapshotRmCommand = defineCommand<{ refs: string[] }>({
  name: "snapshot rm",
  summary: "Remove snapshots",
  usage: "REF [REF...]",
  details:
    "Every reference is tried; the exit code is 1 when any failed. Sandboxes started from a snapshot keep running.\n" +
    "With --json an array of {ref, ok, error?} is printed, one entry per reference.",
  flags: {},
  positionals: { min: 1, max: Number.POSITIVE_INFINITY },
  connection: "auto",
  parse: (raw) => ({ refs: [...new Set(raw.positionals.map(snapshotRefArg))] }),
  async run(ctx, { refs }) {
    return withEngine(ctx, async (engine) => {
      const entries: SnapshotRmJsonEntry[] = [];
      for (const ref of refs) {
        try {
          await engine.deleteSnapshot(ref, { signal: ctx.signal });
          entries.push({ ref, ok: true });
          ctx.out.human(`${ref}\n`);
        } catch (err) {
          const report = reportOf(err);
          entries.push({ ref, ok: false, error: { code: report.code, message: report.message } });
          ctx.out.note(formatErrorLines(report));
        }
      }
      ctx.out.jsonResult(entries);
      return entries.every((e) => e.ok) ? 0 : 1;
    });
  },
});

export const forkCommand = defineCommand<{ id: string; count: number }>({
  name: "fork",
  summary: "Start sandboxes from a running sandbox's current state and print their ids",
  usage: "[-n N] ID",
  details:
    "Each child starts from the sandbox's files (and, on the VM tier, its memory and running processes), with\n" +
    "its own id, cgroup, copy of /work and reseeded RNG, and then runs on its own; the sandbox keeps running.\n" +
    "The children are kept by the daemon like \"mvmctl create\" sandboxes. With --json an array of sandbox records is printed.",
  flags: { count: { type: "string", short: "n", valueName: "N", description: `How many sandboxes to start, 1 to ${MAX_FORK_COUNT} (default 1)` } },
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse(raw) {
    const id = sandboxIdArg(raw.positionals[0] ?? "");
    const count = integerFlag(raw, "count") ?? 1;
    if (count < 1 || count > MAX_FORK_COUNT) throw new UsageError(`Invalid value "${count}" for --count: expected 1 to ${MAX_FORK_COUNT}`);
    return { id, count };
  },
  async run(ctx, { id, count }) {
    return withEngine(ctx, async (engine) => {
      const sandboxes = await engine.forkSandbox(id, { count }, { signal: ctx.signal });
      for (const s of sandboxes) ctx.out.human(`${s.id}\n`);
      ctx.out.jsonResult(sandboxes);
      return 0;
    });
  },
});
