/**
 * Test helpers: a "host" is a state directory with its own key pair, snapshot store and image
 * store, as two engines on two machines would have. `seedImage` makes a small image (with a
 * world-writable sticky directory and a group-writable file); `seedSnapshot` makes a
 * container-tier snapshot of an image (a /work archive part with data, zeros and a short tail).
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { chmod, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ImageStore, type ImageRecord } from "../../images/store.js";
import { CHUNK_SIZE } from "../../store/chunks.js";
import { SnapshotStore, type StoredSnapshot } from "../../store/snapshot-store.js";

export interface TestHost {
  readonly dir: string;
  readonly snapshots: SnapshotStore;
  readonly images: ImageStore;
  readonly tmpRoot: string;
}

/** A fresh host under `parent`. */
export async function newHost(parent: string, name: string): Promise<TestHost> {
  const dir = join(parent, name);
  await mkdir(dir, { recursive: true });
  const keys = generateKeyPairSync("ed25519");
  const snapshots = await SnapshotStore.open(join(dir, "snapshots"), keys);
  const images = await ImageStore.open(join(dir, "images"));
  const tmpRoot = join(dir, "bundles-tmp");
  await mkdir(tmpRoot, { recursive: true });
  return { dir, snapshots, images, tmpRoot };
}

/** A temp directory for one test file. */
export function tempParent(): Promise<string> {
  return mkdtemp(join(tmpdir(), "mvm-bundle-test-"));
}

/** Imports a small image tree (files, a symlink, an empty dir) under `name`. */
export async function seedImage(host: TestHost, name: string, extra = ""): Promise<ImageRecord> {
  const src = await mkdtemp(join(tmpdir(), "mvm-bundle-img-"));
  try {
    await mkdir(join(src, "etc"));
    await mkdir(join(src, "usr/bin"), { recursive: true });
    await mkdir(join(src, "var/empty"), { recursive: true });
    await writeFile(join(src, "etc/hostname"), `bundle-test${extra}\n`);
    await writeFile(join(src, "usr/bin/tool"), randomBytes(3 * 1024 * 1024 + 77), { mode: 0o755 });
    await symlink("usr/bin", join(src, "bin"));
    // Group and other write bits are part of the image digest: a sticky world-writable dir and a
    // group-writable file must arrive as they are.
    await mkdir(join(src, "var/tmp"));
    await chmod(join(src, "var/tmp"), 0o1777);
    await writeFile(join(src, "var/shared"), "rw for the group\n");
    await chmod(join(src, "var/shared"), 0o664);
    return await host.images.importDir(src, name);
  } finally {
    await rm(src, { recursive: true, force: true });
  }
}

/** A container-tier snapshot of `image`: a `work` part of data, zeros, data and a short tail; a small `tmp` part. */
export async function seedSnapshot(host: TestHost, image: ImageRecord): Promise<{ snap: StoredSnapshot; work: Buffer; tmp: Buffer }> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-bundle-parts-"));
  try {
    const work = Buffer.concat([randomBytes(CHUNK_SIZE), Buffer.alloc(CHUNK_SIZE), randomBytes(CHUNK_SIZE + 4321)]);
    const tmp = randomBytes(1000);
    await writeFile(join(dir, "work"), work);
    await writeFile(join(dir, "tmp"), tmp);
    const snap = await host.snapshots.create({
      parts: { work: join(dir, "work"), tmp: join(dir, "tmp") },
      shape: { tier: "container", imageDigest: image.digest, workMiB: 64 },
      kind: "user",
      source: "sbx_test",
      retention: { manual: true },
      memory: false,
      labels: { "mvm/resources": "{}", purpose: "bundle-test" },
    });
    return { snap, work, tmp };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** What a host holds: snapshot records, chunks, images, temp entries. For "left no state" checks. */
export async function hostState(host: TestHost): Promise<{ snapshots: number; chunks: number; images: number; tmp: number }> {
  const chunks: string[] = [];
  for await (const id of host.snapshots.chunks.list()) chunks.push(id);
  return {
    snapshots: (await host.snapshots.list()).length,
    chunks: chunks.length,
    images: (await host.images.list()).length,
    tmp: (await readdir(host.tmpRoot)).length,
  };
}
