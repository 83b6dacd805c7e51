/**
 * `mvmctl bundle push|pull`: move a snapshot (with its image) or an image between hosts. A push
 * prints the bundle digest and the pinned source; a pull names that digest and verifies every
 * byte against it before anything is stored. See docs/BUNDLES.md.
 */
import { MAX_SNAPSHOT_TTL_SECONDS, type BundlePullInfo, type BundlePushInfo, type SnapshotRetention } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { booleanFlag, integerFlag } from "../flags.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

export interface BundlePushOptions {
  source: string;
  destination: string;
}

export const bundlePushCommand = defineCommand<BundlePushOptions>({
  name: "bundle push",
  summary: "Pack a snapshot (with its image) or an image into a bundle at DEST",
  usage: "SNAPSHOT|IMAGE DEST",
  details:
    "SNAPSHOT is a snapshot id or digest; IMAGE an image reference or digest. DEST is file:///absolute/dir,\n" +
    "oci://host[:port]/repository[:tag] (https) or oci+http://127.0.0.1:PORT/repository (loopback only).\n" +
    "Prints the bundle digest and the source to pull it from (LOCATION@sha256:DIGEST).\n" +
    "With --json the push record is printed.",
  flags: {},
  positionals: { min: 2, max: 2 },
  connection: "auto",
  parse(raw) {
    const [source = "", destination = ""] = raw.positionals;
    return { source, destination };
  },
  async run(ctx, { source, destination }) {
    return withEngine(ctx, async (engine) => {
      const pushed: BundlePushInfo = await engine.pushBundle({ source, destination }, { signal: ctx.signal });
      ctx.out.human(`${pushed.digest}\n  ${pushed.kind} bundle, ${pushed.bytes} bytes in ${pushed.packs} pack(s), ${pushed.chunks} chunk(s)\n  pull with: mvmctl bundle pull ${pushed.uri}\n`);
      ctx.out.jsonResult(pushed);
      return 0;
    });
  },
});

export interface BundlePullOptions {
  source: string;
  retention: SnapshotRetention | undefined;
}

export const bundlePullCommand = defineCommand<BundlePullOptions>({
  name: "bundle pull",
  summary: "Pull a bundle by digest: verify it and store its image and snapshot",
  usage: "[--ttl SECONDS | --keep] SRC@sha256:DIGEST",
  details:
    "SRC is file:///absolute/dir, https://host/path, oci://host/repository or oci+http://127.0.0.1:PORT/repository.\n" +
    "Only digest-pinned sources are pulled; no query, fragment, userinfo, percent-encoding or \"..\".\n" +
    "bundle.json, the index, every pack and every chunk are verified before anything is stored.\n" +
    `A snapshot bundle needs a retention for the snapshot it makes: --ttl (60 to ${MAX_SNAPSHOT_TTL_SECONDS} s) or --keep.\n` +
    "With --json the pull record is printed.",
  flags: {
    ttl: { type: "string", valueName: "SECONDS", description: "Remove a pulled snapshot this long after the pull" },
    keep: { type: "boolean", description: "Keep a pulled snapshot until it is removed" },
  },
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse(raw) {
    const [source = ""] = raw.positionals;
    const ttlSeconds = integerFlag(raw, "ttl");
    const keep = booleanFlag(raw, "keep");
    if (ttlSeconds !== undefined && keep) throw new UsageError("--ttl and --keep cannot be combined: choose one retention");
    const retention: SnapshotRetention | undefined = keep ? { manual: true } : ttlSeconds !== undefined ? { ttlSeconds } : undefined;
    return { source, retention };
  },
  async run(ctx, { source, retention }) {
    return withEngine(ctx, async (engine) => {
      const pulled: BundlePullInfo = await engine.pullBundle({ source, ...(retention === undefined ? {} : { retention }) }, { signal: ctx.signal });
      const lines = [
        `${pulled.digest}: ${pulled.kind} bundle verified`,
        `  image ${pulled.image.digest}`,
        ...(pulled.snapshot === undefined ? [] : [`  snapshot ${pulled.snapshot.id} (start it with: mvmctl create --from-snapshot ${pulled.snapshot.id})`]),
        `  fetched ${pulled.fetchedBytes} bytes (${pulled.packsFetched} of ${pulled.packs} pack(s)); ${pulled.chunksReused} chunk(s) already here`,
      ];
      ctx.out.human(`${lines.join("\n")}\n`);
      ctx.out.jsonResult(pulled);
      return 0;
    });
  },
});
