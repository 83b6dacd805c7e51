/**
 * Bundles: move a snapshot (with its image) or an image between hosts. A push writes a bundle to
 * a location and answers its digest; a pull on another host names that digest, and everything it
 * fetches is verified against it before anything is stored. See docs/BUNDLES.md.
 */
import type { BundlePullInfo, BundlePushInfo, CallOptions, SnapshotRetention } from "@mvm/protocol";
import { callOptions } from "./_internal/call-options.js";
import { sharedEngine, type ConnectionOptions } from "./connect.js";
import { Snapshot } from "./snapshot.js";

export type BundleConnectOptions = ConnectionOptions & CallOptions;

/** Options of {@link Bundle.pull}. */
export interface BundlePullOptions extends BundleConnectOptions {
  /** How long a pulled snapshot is kept: `{ ttlSeconds }` or `{ manual: true }`. Required for snapshot bundles. */
  retention?: SnapshotRetention;
}

/** Push and pull of bundles, through the daemon or an embedded engine like the rest of the SDK. */
export class Bundle {
  private constructor() {}

  /**
   * Packs a snapshot (`snap_…`, its digest, or a {@link Snapshot}) with its image, or an image
   * (a reference or digest) alone, into a bundle at `destination`: `file:///absolute/dir`,
   * `oci://host/repository[:tag]` or `oci+http://127.0.0.1:PORT/repository` (loopback only).
   * @returns the bundle digest and `uri`, the pinned source a pull takes
   * @throws NotFoundError when the source is not stored; InvalidArgumentError for a bad location
   * @example
   * const { uri } = await Bundle.push(snap, "oci://registry.example/team/envs");
   */
  static async push(source: string | Snapshot, destination: string, options: BundleConnectOptions = {}): Promise<BundlePushInfo> {
    const engine = await sharedEngine(options);
    return engine.pushBundle({ source: typeof source === "string" ? source : source.id, destination }, callOptions(options));
  }

  /**
   * Pulls the bundle `source` (`LOCATION@sha256:<64 hex>`) into this host's stores. bundle.json,
   * the index, each pack and each chunk are verified before anything is stored; a snapshot
   * bundle becomes a snapshot of this host, ready for `Sandbox.create({ fromSnapshot })`.
   * @throws SnapshotMismatchError when anything fails verification (nothing is left behind)
   * @throws InvalidArgumentError for a source that is not digest-pinned or breaks the location rules
   * @example
   * const { snapshot } = await Bundle.pull("oci://registry.example/team/envs@sha256:…", { retention: { ttlSeconds: 86400 } });
   * await using sb = await Sandbox.create({ fromSnapshot: snapshot!.id });
   */
  static async pull(source: string, options: BundlePullOptions = {}): Promise<BundlePullInfo> {
    const engine = await sharedEngine(options);
    const { retention, ...rest } = options;
    return engine.pullBundle({ source, ...(retention === undefined ? {} : { retention }) }, callOptions(rest));
  }
}
