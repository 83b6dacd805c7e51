/**
 * The agent runtime: a directory mounted read-only at /.mvm in every sandbox that lets the agent
 * run in an image without Node.js. Layout:
 *
 *   bin/ld-linux-x86-64.so.2  0111  the host's dynamic loader (execute-only, see below)
 *   bin/node                  0555  the host's Node.js binary
 *   lib/<soname>              0444  every shared library `ldd node` lists
 *   agent.cjs                 0444  the bundled agent
 *   fn-wrapper.cjs            0444  the function-call wrapper (docs/FUNCTIONS.md), when built
 *   bin/mvm-pty               0555  the terminal helper (docs/TERMINALS.md), when it could be built
 *   manifest.txt              0444  one line per file above: mode, size, sha256, path
 *
 * The directory is named by the sha256 of its manifest, built in a temporary directory and
 * renamed into place, and reused when already present.
 *
 * The agent is started through the loader. Because the loader file is not readable by the
 * sandbox user, the kernel marks the process it starts non-dumpable: a workload running as the
 * same uid cannot open the agent's /proc/PID/mem or ptrace it.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { chmod, lstat, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { InternalError, InvalidArgumentError } from "@mvm/protocol";
import { LOADER_NAME, listSharedLibraries } from "./shared-libs.js";
import { publishDir, removeDeadTemps, tempPathIn } from "../store/atomic.js";
import type { HostFacts } from "../store/host-facts.js";
import { z } from "zod";

/** Where the runtime is mounted inside a sandbox. */
export const AGENT_MOUNT_POINT = "/.mvm";

const MANIFEST_NAME = "manifest.txt";
const MANIFEST_HEADER = "mvm-agent-runtime v1";

export interface AssembleAgentRuntimeOptions {
  /** Host path of the bundled agent (one ES module file). */
  readonly agentBundlePath: string;
  /**
   * Host path of the bundled function-call wrapper. @default `fn-wrapper.cjs` beside
   * agentBundlePath, when that file exists
   */
  readonly fnWrapperPath?: string;
  /** Host path of the static terminal helper (`runtime/pty-helper.ts`). @default none: no terminals */
  readonly ptyHelperPath?: string | undefined;
  /** Host path of the Node.js binary to ship. @default process.execPath */
  readonly nodeBinary?: string;
  /** Directory under which runtimes are kept, one subdirectory per digest. Created 0755 if missing. */
  readonly outRoot: string;
  /**
   * Where the libraries of the Node binary and the sha256 of each source file are kept between
   * engine starts, reused while the files are unchanged. @default none: computed every time
   */
  readonly facts?: HostFacts;
}

const LibraryList = z.strictObject({
  loader: z.string().startsWith("/"),
  libraries: z.array(z.strictObject({ name: z.string(), path: z.string().startsWith("/") })).max(256),
});
const FileSum = z.strictObject({ sha256: z.string().regex(/^[0-9a-f]{64}$/), size: z.number().int().nonnegative() });

export interface AgentRuntime {
  /** Absolute path of the runtime directory (`outRoot/<hex digest>`). */
  readonly dir: string;
  /** `sha256:<hex>` of the manifest. */
  readonly digest: string;
}

interface RuntimeFile {
  /** Path inside the runtime directory. */
  readonly path: string;
  readonly source: string;
  readonly mode: number;
}

interface HashedFile extends RuntimeFile {
  readonly sha256: string;
  readonly size: number;
}

export interface AgentCommandOptions {
  /** Path (inside the sandbox) of the Unix socket the agent connects for the egress relay. */
  readonly relayPath?: string;
}

/**
 * The argv that starts the agent inside a sandbox, reading frames on fd 0 and writing on fd 1,
 * and with `relayPath`, connecting its egress relay there (`--relay <path>`).
 * @example spawn(agentRuntimeCommand()[0], agentRuntimeCommand().slice(1))
 */
export function agentRuntimeCommand(options: AgentCommandOptions = {}): readonly string[] {
  return [
    `${AGENT_MOUNT_POINT}/bin/${LOADER_NAME}`,
    "--library-path",
    `${AGENT_MOUNT_POINT}/lib`,
    `${AGENT_MOUNT_POINT}/bin/node`,
    `${AGENT_MOUNT_POINT}/agent.cjs`,
    "--channel",
    "stdio",
    ...(options.relayPath !== undefined ? ["--relay", options.relayPath] : []),
  ];
}

/**
 * Builds (or reuses) the agent runtime directory for `agentBundlePath` and `nodeBinary`.
 * @example const { dir } = await assembleAgentRuntime({ agentBundlePath: "dist/agent.cjs", outRoot: "/var/lib/mvm/runtime" });
 */
export async function assembleAgentRuntime(options: AssembleAgentRuntimeOptions): Promise<AgentRuntime> {
  const nodeBinary = options.nodeBinary ?? process.execPath;
  for (const [label, path] of [["agentBundlePath", options.agentBundlePath], ["nodeBinary", nodeBinary], ["outRoot", options.outRoot]] as const) {
    if (!path.startsWith("/")) throw new InvalidArgumentError(`Invalid ${label} "${path}": must be an absolute path`);
  }
  const facts = options.facts;
  const libs = facts === undefined
    ? await listSharedLibraries(nodeBinary)
    : await facts.fact({
        key: `ldd:${nodeBinary}`,
        files: [nodeBinary],
        schema: LibraryList,
        compute: async () => {
          const value = await listSharedLibraries(nodeBinary);
          return { value, discovered: [value.loader, ...value.libraries.map((l) => l.path)] };
        },
      });
  const plan: RuntimeFile[] = [
    { path: `bin/${LOADER_NAME}`, source: libs.loader, mode: 0o111 },
    { path: "bin/node", source: nodeBinary, mode: 0o555 },
    ...libs.libraries.map((lib) => ({ path: `lib/${lib.name}`, source: lib.path, mode: 0o444 })),
    { path: "agent.cjs", source: options.agentBundlePath, mode: 0o444 },
  ];
  const fnWrapper = options.fnWrapperPath ?? join(dirname(options.agentBundlePath), "fn-wrapper.cjs");
  if (options.fnWrapperPath !== undefined || (await lstat(fnWrapper).catch(() => undefined))?.isFile()) {
    plan.push({ path: "fn-wrapper.cjs", source: fnWrapper, mode: 0o444 });
  }
  if (options.ptyHelperPath !== undefined) plan.push({ path: "bin/mvm-pty", source: options.ptyHelperPath, mode: 0o555 });
  const sum = (path: string): Promise<{ sha256: string; size: number }> =>
    facts === undefined
      ? hashFile(path)
      : facts.fact({ key: `sha256:${path}`, files: [path], schema: FileSum, compute: async () => ({ value: await hashFile(path) }) });
  const hashed = await Promise.all(plan.map(async (file) => ({ ...file, ...(await sum(file.source)) })));
  const manifest = renderManifest(hashed);
  const hex = createHash("sha256").update(manifest).digest("hex");
  const dir = join(options.outRoot, hex);
  const runtime = { dir, digest: `sha256:${hex}` };

  await mkdir(options.outRoot, { recursive: true, mode: 0o755 });
  if (await isIntact(dir, manifest, hashed)) return runtime;
  await removeStale(options.outRoot, dir, hex);

  await removeDeadTemps(options.outRoot, removeTree);
  try {
    await publishDir(
      dir,
      async (tmp) => {
        await chmod(tmp, 0o755);
        await mkdir(join(tmp, "bin"), { mode: 0o755 });
        await mkdir(join(tmp, "lib"), { mode: 0o755 });
        for (const file of hashed) await copyVerified(file, join(tmp, file.path));
        await writeFile(join(tmp, MANIFEST_NAME), manifest, { mode: 0o444, flag: "wx" });
        for (const file of hashed) await chmod(join(tmp, file.path), file.mode);
        await chmod(join(tmp, MANIFEST_NAME), 0o444);
        for (const sub of ["bin", "lib", "."]) await chmod(join(tmp, sub), 0o555);
      },
      // Another process may have put one in place meanwhile: an intact one is used as is.
      { ifExists: async (existing) => ((await isIntact(existing, manifest, hashed)) ? "keep" : "replace"), remove: removeTree },
    );
  } catch (err) {
    if (err instanceof InternalError) throw err;
    throw new InternalError(`Cannot assemble the agent runtime in "${options.outRoot}"`, { cause: err });
  }
  return runtime;
}

function renderManifest(files: readonly HashedFile[]): string {
  const lines = [...files]
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    .map((f) => `${f.mode.toString(8).padStart(4, "0")} ${f.size} sha256:${f.sha256} ${f.path}`);
  return `${MANIFEST_HEADER}\n${lines.join("\n")}\n`;
}

async function hashFile(path: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  try {
    for await (const chunk of createReadStream(path)) {
      hash.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
  } catch (err) {
    throw new InternalError(`Cannot assemble the agent runtime: cannot read "${path}"`, { cause: err });
  }
  return { sha256: hash.digest("hex"), size };
}

/** Copies `file.source` to `dest` and checks that what was written is what was hashed. */
async function copyVerified(file: HashedFile, dest: string): Promise<void> {
  const hash = createHash("sha256");
  const source = createReadStream(file.source);
  source.on("data", (chunk) => hash.update(chunk as Buffer));
  await pipeline(source, createWriteStream(dest, { flags: "wx", mode: 0o600 }));
  if (hash.digest("hex") !== file.sha256) {
    throw new InternalError(`Cannot assemble the agent runtime: "${file.source}" changed while it was copied`);
  }
}

/** True when `dir` holds exactly this manifest and each file has the recorded mode and size. */
async function isIntact(dir: string, manifest: string, files: readonly HashedFile[]): Promise<boolean> {
  try {
    if ((await readFile(join(dir, MANIFEST_NAME), "utf8")) !== manifest) return false;
    for (const file of files) {
      const st = await lstat(join(dir, file.path));
      if (!st.isFile() || (st.mode & 0o7777) !== file.mode || st.size !== file.size) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** Moves a damaged runtime directory out of the way and deletes it. */
async function removeStale(outRoot: string, dir: string, hex: string): Promise<void> {
  const aside = await tempPathIn(outRoot, `stale-${hex}`);
  try {
    await rename(dir, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new InternalError(`Cannot replace damaged agent runtime "${dir}"`, { cause: err });
  }
  await removeTree(aside);
}

/** Deletes a tree whose directories may be read-only (0555) for the owner. */
async function removeTree(path: string): Promise<void> {
  for (const sub of [".", "bin", "lib"]) await chmod(join(path, sub), 0o755).catch(() => undefined);
  await rm(path, { recursive: true, force: true });
}
