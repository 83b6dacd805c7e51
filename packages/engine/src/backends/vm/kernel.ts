/**
 * The guest kernel: Debian's cloud kernel (`linux-image-cloud-amd64`), fetched with apt and kept
 * in a content-addressed store together with the modules the initramfs loads.
 *
 * Store layout, under `root/<sha256 of vmlinuz>/`:
 *
 *   vmlinuz              the kernel image
 *   modules/<name>.ko    each module the initramfs needs (names with "_" for "-")
 *   modules/order        one module name a line, in load order (dependencies first)
 *   manifest.txt         "sha256:<hex> <path>" per file above, and the kernel version
 *
 * `root/current` names the digest of the kernel fetched last.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { access, chmod, copyFile, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { promisify } from "node:util";
import { InternalError, InvalidArgumentError, NotFoundError } from "@mvm/protocol";
import { publishDir, removeDeadTemps, tempPathIn, writeFileAtomic } from "../../store/atomic.js";
import { z } from "zod";
import type { HostFacts } from "../../store/host-facts.js";

const run = promisify(execFile);

/**
 * The modules the guest needs: virtio transport, console and block devices, device mapper verity,
 * and the balloon (free page reporting: memory the guest frees goes back to the host).
 */
export const GUEST_MODULES: readonly string[] = ["virtio_mmio", "virtio_console", "virtio_blk", "dm_verity", "virtio_balloon"];

/** The meta package that depends on the current versioned cloud kernel package. */
export const KERNEL_META_PACKAGE = "linux-image-cloud-amd64";

export interface GuestKernel {
  /** Absolute path of the kernel image. */
  readonly kernelPath: string;
  /** Directory holding `<name>.ko` for each module in `moduleOrder`. */
  readonly modulesDir: string;
  /** Module names in load order. */
  readonly moduleOrder: readonly string[];
  /** `sha256:<hex>` of the kernel image. */
  readonly digest: string;
  /** Kernel release, e.g. "6.1.0-56-cloud-amd64". */
  readonly version: string;
}

/** Module names are matched with "-" and "_" treated alike; the store uses "_". */
export function normalizeModuleName(name: string): string {
  return name.replaceAll("-", "_");
}

/**
 * Reads the `depends=` entry of a module's .modinfo section: the names of the modules it needs.
 * Returns [] for a module without dependencies; throws InvalidArgumentError when there is no entry.
 */
export function parseModuleDepends(ko: Uint8Array): string[] {
  const buf = Buffer.from(ko.buffer, ko.byteOffset, ko.byteLength);
  const key = Buffer.from("\0depends=");
  const at = buf.indexOf(key);
  if (at < 0) throw new InvalidArgumentError("Module has no depends= entry in its .modinfo section");
  const start = at + key.length;
  const end = buf.indexOf(0, start);
  if (end < 0 || end - start > 4096) throw new InvalidArgumentError("Module has a malformed depends= entry");
  const value = buf.subarray(start, end).toString("latin1");
  return value === "" ? [] : value.split(",").map(normalizeModuleName);
}

/**
 * Orders `wanted` and everything they depend on so that each module comes after its
 * dependencies. `dependsOf` returns the direct dependencies of one (normalized) name.
 * Throws InvalidArgumentError on a cycle.
 */
export function moduleLoadOrder(wanted: readonly string[], dependsOf: (name: string) => readonly string[]): string[] {
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (raw: string, path: readonly string[]): void => {
    const name = normalizeModuleName(raw);
    const seen = state.get(name);
    if (seen === "done") return;
    if (seen === "visiting") throw new InvalidArgumentError(`Module dependency cycle "${[...path, name].join(" -> ")}"`);
    state.set(name, "visiting");
    for (const dep of dependsOf(name)) visit(dep, [...path, name]);
    state.set(name, "done");
    order.push(name);
  };
  for (const name of wanted) visit(name, []);
  return order;
}

/**
 * Finds the versioned kernel package in the `Depends` field of the meta package, e.g.
 * "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)" gives "linux-image-6.1.0-56-cloud-amd64".
 */
export function parseKernelPackage(depends: string): string {
  for (const alternative of depends.split(/[,|]/)) {
    const name = alternative.trim().split(/\s+/)[0] ?? "";
    if (/^linux-image-[0-9][a-z0-9.+-]*-cloud-amd64$/.test(name)) return name;
  }
  throw new InvalidArgumentError(`No versioned cloud kernel package in Depends "${depends}"`);
}

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

async function sha256File(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

/** Maps each module name under `dir` (recursively) to its file. */
async function indexModules(dir: string): Promise<Map<string, string>> {
  const map = new Map<string, string>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith(".ko")) {
      map.set(normalizeModuleName(entry.name.slice(0, -3)), join(entry.parentPath, entry.name));
    }
  }
  return map;
}

function renderManifest(version: string, files: ReadonlyArray<{ path: string; sha256: string }>): string {
  return `mvm-guest-kernel v1 ${version}\n${files.map((f) => `sha256:${f.sha256} ${f.path}`).join("\n")}\n`;
}

/**
 * Opens a stored kernel and checks every file against its manifest and the kernel against
 * `digest`. Throws NotFoundError when absent, InternalError when the store is damaged.
 */
export async function openGuestKernel(root: string, digest: string, facts?: HostFacts): Promise<GuestKernel> {
  const match = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (match === null) throw new InvalidArgumentError(`Invalid kernel digest "${digest}"`);
  const hex = match[1] as string;
  const dir = join(root, hex);
  let manifest: string;
  try {
    manifest = await readFile(join(dir, "manifest.txt"), "utf8");
  } catch (err) {
    throw new NotFoundError(`No guest kernel "${digest}" in "${root}"`, { cause: err });
  }
  const [header = "", ...lines] = manifest.trimEnd().split("\n");
  const version = /^mvm-guest-kernel v1 (\S+)$/.exec(header)?.[1];
  if (version === undefined) throw new InternalError(`Guest kernel manifest in "${dir}" is malformed`);
  for (const line of lines) {
    const m = /^sha256:([0-9a-f]{64}) ([a-z0-9_./]+)$/.exec(line);
    if (m === null || m[2]?.includes("..")) throw new InternalError(`Guest kernel manifest line "${line}" is malformed`);
    const file = join(dir, m[2] as string);
    const sum = (): Promise<string> => sha256File(file);
    // Checked in full the first time; later, reused while the file's identity is unchanged.
    const actual = await (facts === undefined
      ? sum()
      : facts.fact({ key: `sha256:${file}`, files: [file], schema: Sha256Hex, compute: async () => ({ value: await sum() }), keep: (v) => v === m[1] })
    ).catch(() => "missing");
    if (actual !== m[1]) throw new InternalError(`Guest kernel file "${join(dir, m[2] as string)}" does not match its manifest`);
    if (m[2] === "vmlinuz" && actual !== hex) throw new InternalError(`Guest kernel in "${dir}" does not match digest "${digest}"`);
  }
  const moduleOrder = (await readFile(join(dir, "modules", "order"), "utf8")).split("\n").filter((l) => l !== "");
  return { kernelPath: join(dir, "vmlinuz"), modulesDir: join(dir, "modules"), moduleOrder, digest, version };
}

interface KernelSource {
  /** The kernel image (bzImage). */
  readonly kernelSource: string;
  /** The kernel's module tree (`/lib/modules/<release>`), searched recursively for `.ko` files. */
  readonly modulesRoot: string;
  readonly version: string;
  /** Names the source in error messages. */
  readonly what: string;
}

/**
 * Copies a kernel and the modules in `GUEST_MODULES` (with their dependencies, in load order)
 * into the store under `root/<sha256 of the kernel>/` and returns it.
 */
async function storeGuestKernel(root: string, source: KernelSource): Promise<GuestKernel> {
  const { kernelSource, version } = source;
  await access(kernelSource, constants.R_OK);
  const modules = await indexModules(source.modulesRoot);
  const depsCache = new Map<string, readonly string[]>();
  const dependsOf = (name: string): readonly string[] => {
    const deps = depsCache.get(name);
    if (deps === undefined) throw new InternalError(`Module "${name}" was not read`);
    return deps;
  };
  // Read dependencies breadth-first, then order them.
  const queue = [...GUEST_MODULES];
  while (queue.length > 0) {
    const name = normalizeModuleName(queue.shift() as string);
    if (depsCache.has(name)) continue;
    const file = modules.get(name);
    if (file === undefined) throw new InvalidArgumentError(`${source.what} has no module "${name}" (the guest needs ${GUEST_MODULES.join(", ")})`);
    const deps = parseModuleDepends(await readFile(file));
    depsCache.set(name, deps);
    queue.push(...deps);
  }
  const order = moduleLoadOrder(GUEST_MODULES, dependsOf);

  const hex = await sha256File(kernelSource);
  await removeDeadTemps(root);
  await publishDir(
    join(root, hex),
    async (staging) => {
      await mkdir(join(staging, "modules"), { recursive: true, mode: 0o755 });
      await copyFile(kernelSource, join(staging, "vmlinuz"));
      const files = [{ path: "vmlinuz", sha256: hex }];
      for (const name of order) {
        await copyFile(modules.get(name) as string, join(staging, "modules", `${name}.ko`));
        files.push({ path: `modules/${name}.ko`, sha256: await sha256File(join(staging, "modules", `${name}.ko`)) });
      }
      await writeFile(join(staging, "modules", "order"), `${order.join("\n")}\n`);
      await writeFile(join(staging, "manifest.txt"), renderManifest(version, files));
      await chmod(staging, 0o755);
    },
    { ifExists: async () => "replace" },
  );
  return openGuestKernel(root, `sha256:${hex}`);
}

/**
 * Stores a kernel the user names (its image and its module tree, e.g. `/boot/vmlinuz-6.1.0-x` and
 * `/lib/modules/6.1.0-x`) for use as the guest kernel. It must be an x86_64 kernel with virtio-mmio,
 * virtio-blk, virtio-console and dm-verity available as modules in that tree. The store is keyed by
 * the image's sha256, so a changed kernel file is a new kernel.
 * @example const kernel = await importGuestKernel("/var/lib/mvm/vm/kernel", "/boot/vmlinuz-6.1.0-28-cloud-amd64", "/lib/modules/6.1.0-28-cloud-amd64");
 */
export async function importGuestKernel(root: string, kernelPath: string, modulesRoot: string): Promise<GuestKernel> {
  for (const [label, path] of [["root", root], ["kernel path", kernelPath], ["modules directory", modulesRoot]] as const) {
    if (!path.startsWith("/")) throw new InvalidArgumentError(`Invalid ${label} "${path}": must be an absolute path`);
  }
  const version = basename(modulesRoot);
  if (!/^[A-Za-z0-9._+-]{1,64}$/.test(version)) throw new InvalidArgumentError(`Invalid modules directory "${modulesRoot}": its name must be the kernel release`);
  await mkdir(root, { recursive: true, mode: 0o755 });
  try {
    return await storeGuestKernel(root, { kernelSource: kernelPath, modulesRoot, version, what: `Kernel "${kernelPath}"` });
  } catch (err) {
    if (err instanceof InternalError || err instanceof InvalidArgumentError) throw err;
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new NotFoundError(`Kernel "${kernelPath}" or its modules "${modulesRoot}" not found`, { cause: err });
    throw new InternalError(`Cannot store the kernel "${kernelPath}"`, { cause: err });
  }
}

/**
 * Downloads the current cloud kernel package with apt, extracts it, and stores the kernel and
 * the modules in `GUEST_MODULES` (with their dependencies) under `root`. Needs network access to
 * the apt mirror and `dpkg-deb`.
 * @example const kernel = await fetchGuestKernel("/var/lib/mvm/kernels");
 */
export async function fetchGuestKernel(root: string): Promise<GuestKernel> {
  if (!root.startsWith("/")) throw new InvalidArgumentError(`Invalid kernel root "${root}": must be an absolute path`);
  await mkdir(root, { recursive: true, mode: 0o755 });
  const tmp = await tempPathIn(root, "fetch");
  await mkdir(tmp, { mode: 0o700 });
  try {
    const apt = (pkg: string) => run("apt-get", ["download", pkg], { cwd: tmp, maxBuffer: 1 << 20 });
    await apt(KERNEL_META_PACKAGE);
    const meta = (await readdir(tmp)).find((f) => f.startsWith(`${KERNEL_META_PACKAGE}_`) && f.endsWith(".deb"));
    if (meta === undefined) throw new InternalError(`apt-get download "${KERNEL_META_PACKAGE}" produced no .deb`);
    const { stdout: depends } = await run("dpkg-deb", ["-f", join(tmp, meta), "Depends"]);
    const pkg = parseKernelPackage(depends.trim());
    await apt(pkg);
    const deb = (await readdir(tmp)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(".deb"));
    if (deb === undefined) throw new InternalError(`apt-get download "${pkg}" produced no .deb`);
    const tree = join(tmp, "tree");
    await run("dpkg-deb", ["-x", join(tmp, deb), tree]);

    const version = pkg.slice("linux-image-".length);
    const kernel = await storeGuestKernel(root, { kernelSource: join(tree, "boot", `vmlinuz-${version}`), modulesRoot: join(tree, "lib", "modules", version), version, what: `Kernel package "${pkg}"` });
    await writeFileAtomic(join(root, "current"), `${kernel.digest}\n`);
    return kernel;
  } catch (err) {
    if (err instanceof InternalError || err instanceof InvalidArgumentError) throw err;
    throw new InternalError(`Cannot fetch the guest kernel into "${root}"`, { cause: err });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The kernel named by `root/current` when it is intact and has every module the guest needs, else a freshly fetched one. */
export async function ensureGuestKernel(root: string, facts?: HostFacts): Promise<GuestKernel> {
  let stored: GuestKernel | undefined;
  try {
    stored = await openGuestKernel(root, (await readFile(join(root, "current"), "utf8")).trim(), facts);
  } catch {
    stored = undefined;
  }
  // A kernel stored before the guest needed another module is fetched (extracted) again.
  if (stored !== undefined && GUEST_MODULES.every((m) => stored.moduleOrder.includes(normalizeModuleName(m)))) return stored;
  return fetchGuestKernel(root);
}
