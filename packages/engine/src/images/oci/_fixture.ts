/**
 * Test helpers: OCI layouts written by hand (so a test can make any layer or document lie) and
 * by Debian's umoci (so the importer meets a real tool's output).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { buildTar, type TarEntrySpec } from "../_tar-fixture.js";

export const UMOCI = "/usr/bin/umoci";
export const SKOPEO = "/usr/bin/skopeo";
export const ZSTD = "/usr/bin/zstd";

export function toolSkipReason(...tools: string[]): string | undefined {
  const missing = tools.filter((t) => !existsSync(t));
  return missing.length === 0 ? undefined : `${missing.join(", ")} not installed (apt-get install umoci skopeo)`;
}

export function sha256(bytes: Uint8Array): `sha256:${string}` {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

export interface HandLayer {
  entries: TarEntrySpec[];
  /** Replace the blob's bytes after its digest was computed. */
  tamperBlob?: boolean;
  /** Give the config a wrong diff_id for this layer. */
  lieDiffId?: boolean;
  /** Declare a wrong size in the manifest. */
  lieSize?: boolean;
  /**
   * Compress with this: `zstd` with Debian's zstd CLI (reading stdin, so the frame's window is
   * not shrunk to the input's size; `zstdArgs` adds options), `fake-zstd` the zstd magic number
   * followed by the plain tar. @default "gzip"
   */
  compression?: "gzip" | "none" | "zstd" | "fake-zstd";
  zstdArgs?: string[];
  /** Declare this compression in the media type instead of the real one. */
  declare?: "gzip" | "none";
}

export interface HandLayoutOptions {
  env?: string[];
  workingDir?: string;
  user?: string;
  cmd?: string[];
  /** Add one diff_id too many to the config. */
  extraDiffId?: boolean;
  /** Extra top-level field in the manifest. */
  manifestExtraField?: boolean;
  os?: string;
}

/** Writes an OCI layout at `dir` with the given layers; returns the manifest digest. */
export async function writeHandLayout(dir: string, layers: HandLayer[], options: HandLayoutOptions = {}): Promise<string> {
  const blobs = join(dir, "blobs", "sha256");
  await mkdir(blobs, { recursive: true });
  const put = async (bytes: Buffer): Promise<string> => {
    const d = sha256(bytes);
    await writeFile(join(blobs, d.slice(7)), bytes);
    return d;
  };
  const descs = [];
  const diffIds = [];
  for (const layer of layers) {
    const tar = buildTar(layer.entries);
    const c = layer.compression ?? "gzip";
    const blob =
      c === "gzip" ? gzipSync(tar)
      : c === "zstd" ? execFileSync(ZSTD, ["-q", "-c", ...(layer.zstdArgs ?? [])], { input: tar, maxBuffer: 1024 ** 3 })
      : c === "fake-zstd" ? Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), tar])
      : tar;
    const digest = await put(blob);
    if (layer.tamperBlob) await writeFile(join(blobs, digest.slice(7)), Buffer.concat([blob.subarray(0, blob.length - 1), Buffer.from([blob.at(-1)! ^ 1])]));
    diffIds.push(layer.lieDiffId ? sha256(Buffer.from("lie")) : sha256(tar));
    const declared = layer.declare ?? c;
    const mediaType = declared === "gzip" ? "application/vnd.oci.image.layer.v1.tar+gzip" : declared === "zstd" || declared === "fake-zstd" ? "application/vnd.oci.image.layer.v1.tar+zstd" : "application/vnd.oci.image.layer.v1.tar";
    descs.push({ mediaType, digest, size: blob.length + (layer.lieSize ? 1 : 0) });
  }
  if (options.extraDiffId) diffIds.push(sha256(Buffer.from("extra")));
  const runConfig: Record<string, unknown> = {};
  if (options.env) runConfig.Env = options.env;
  if (options.workingDir) runConfig.WorkingDir = options.workingDir;
  if (options.user) runConfig.User = options.user;
  if (options.cmd) runConfig.Cmd = options.cmd;
  const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: options.os ?? "linux", config: runConfig, rootfs: { type: "layers", diff_ids: diffIds } }));
  const configDigest = await put(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: configDigest, size: config.length },
      layers: descs,
      ...(options.manifestExtraField ? { extra: true } : {}),
    }),
  );
  const manifestDigest = await put(manifest);
  await writeFile(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await writeFile(
    join(dir, "index.json"),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", digest: manifestDigest, size: manifest.length, platform: { os: "linux", architecture: "amd64" } }] }),
  );
  return manifestDigest;
}

/**
 * Builds `DIR/layout:t1` with umoci: layer 1 a static busybox with /etc/motd and /gone/f, layer 2
 * replacing /etc/motd and deleting /gone (a whiteout umoci writes itself); the config sets Env,
 * WorkingDir (/srv), User and Cmd.
 */
export async function writeUmociLayout(dir: string): Promise<string> {
  const layout = join(dir, "layout");
  const bundle = join(dir, "bundle");
  const run = (...args: string[]): void => void execFileSync(UMOCI, args, { stdio: "pipe" });
  run("init", "--layout", layout);
  run("new", "--image", `${layout}:t1`);
  run("unpack", "--rootless", "--image", `${layout}:t1`, bundle);
  const rootfs = join(bundle, "rootfs");
  await mkdir(join(rootfs, "bin"), { recursive: true });
  await cp("/bin/busybox", join(rootfs, "bin", "busybox"));
  for (const tool of ["sh", "cat", "ls", "env", "id", "pwd"]) execFileSync("ln", ["-s", "busybox", join(rootfs, "bin", tool)]);
  await mkdir(join(rootfs, "etc"), { recursive: true });
  await mkdir(join(rootfs, "gone"), { recursive: true });
  await mkdir(join(rootfs, "srv"), { recursive: true });
  await writeFile(join(rootfs, "etc", "motd"), "v1\n");
  await writeFile(join(rootfs, "gone", "f"), "x\n");
  run("repack", "--image", `${layout}:t1`, bundle);
  run("config", "--image", `${layout}:t1`, "--config.env", "FROM_IMAGE=yes", "--config.env", "PATH=/bin", "--config.workingdir", "/srv", "--config.user", "1000", "--config.cmd", "sh");
  await rm(bundle, { recursive: true, force: true });
  run("unpack", "--rootless", "--image", `${layout}:t1`, bundle);
  await rm(join(rootfs, "gone"), { recursive: true, force: true });
  await writeFile(join(rootfs, "etc", "motd"), "v2\n");
  run("repack", "--image", `${layout}:t1`, bundle);
  await rm(bundle, { recursive: true, force: true });
  return layout;
}

/** What {@link writeUmociUserLayout} puts in the image's config. */
export interface UmociUserImage {
  user: string;
  entrypoint?: string[];
  cmd?: string[];
}

/**
 * Builds `DIR/<name>:t1` with umoci, an image of one tag only: a static busybox, an /etc/passwd
 * with root and `app` (uid 4321, group 4322) and an /etc/group, and the config's User,
 * Entrypoint and Cmd from `image`.
 */
export async function writeUmociUserLayout(dir: string, name: string, image: UmociUserImage): Promise<string> {
  const layout = join(dir, name);
  const bundle = join(dir, `${name}-bundle`);
  const run = (...args: string[]): void => void execFileSync(UMOCI, args, { stdio: "pipe" });
  run("init", "--layout", layout);
  run("new", "--image", `${layout}:t1`);
  run("unpack", "--rootless", "--image", `${layout}:t1`, bundle);
  const rootfs = join(bundle, "rootfs");
  await mkdir(join(rootfs, "bin"), { recursive: true });
  await cp("/bin/busybox", join(rootfs, "bin", "busybox"));
  for (const tool of ["sh", "id", "echo", "pwd"]) execFileSync("ln", ["-s", "busybox", join(rootfs, "bin", tool)]);
  for (const d of ["etc", "proc", "dev", "work", "tmp", ".mvm"]) await mkdir(join(rootfs, d), { recursive: true });
  await writeFile(join(rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:4321:4322:app:/work:/bin/sh\n");
  await writeFile(join(rootfs, "etc", "group"), "root:x:0:\napp:x:4322:\nextra:x:4400:\n");
  run("repack", "--image", `${layout}:t1`, bundle);
  const config = ["--config.user", image.user, "--config.env", "PATH=/bin"];
  for (const e of image.entrypoint ?? []) config.push("--config.entrypoint", e);
  for (const c of image.cmd ?? []) config.push("--config.cmd", c);
  run("config", "--image", `${layout}:t1`, ...config);
  await rm(bundle, { recursive: true, force: true });
  return layout;
}
