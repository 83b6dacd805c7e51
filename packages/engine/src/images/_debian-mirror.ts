/**
 * A local Debian mirror for build tests: a flat repository (one suite, component `main`) made
 * from the .deb files setup.sh's build kept, plus any packages a test makes, served over HTTP
 * from a test host in a network namespace (egress/_test-hosts.ts). Tests never reach the real
 * mirror. Needs root, iproute2 and dpkg-deb.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startTestNetwork, type TestNetwork } from "../egress/_test-hosts.js";

const run = promisify(execFile);
const SERVER_JS = fileURLToPath(new URL("./_static-server.js", import.meta.url));

/** Where setup.sh's build keeps the .deb files it downloaded. Override: MVM_TEST_DEBS_DIR. */
export const KEPT_DEBS_DIR = process.env["MVM_TEST_DEBS_DIR"] ?? "/var/cache/mvm/debs";

/** A package a test makes: its control fields and maintainer scripts. */
export interface TestPackage {
  name: string;
  version: string;
  depends?: string;
  /** Shell script run as the package's postinst. */
  postinst?: string;
}

export interface LocalMirror {
  /** The apt line builds use: `deb [trusted=yes] http://IP/ SUITE main`. */
  readonly line: string;
  readonly network: TestNetwork;
  /** Request lines the server printed ("GET /path status"). */
  readonly log: string[];
  close(): Promise<void>;
}

/**
 * The kept .deb files, or an error saying to run setup.sh (never a silent skip).
 * @throws Error when the directory is missing or holds no .deb file.
 */
export async function keptDebs(dir = KEPT_DEBS_DIR): Promise<string[]> {
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith(".deb")).sort();
  if (names.length === 0) {
    throw new Error(`No .deb files in ${dir}: build tests need the packages setup.sh's image build keeps. Run scripts/setup.sh as root (or set MVM_TEST_DEBS_DIR)`);
  }
  return names.map((n) => join(dir, n));
}

async function buildPackage(dir: string, pkg: TestPackage): Promise<string> {
  const root = join(dir, `${pkg.name}-src`);
  await mkdir(join(root, "DEBIAN"), { recursive: true });
  const control = [`Package: ${pkg.name}`, `Version: ${pkg.version}`, "Architecture: all", "Maintainer: mvm tests <tests@invalid>", `Description: ${pkg.name} (mvm test package)`];
  if (pkg.depends) control.push(`Depends: ${pkg.depends}`);
  await writeFile(join(root, "DEBIAN/control"), `${control.join("\n")}\n`);
  if (pkg.postinst !== undefined) {
    await writeFile(join(root, "DEBIAN/postinst"), pkg.postinst);
    await chmod(join(root, "DEBIAN/postinst"), 0o755);
  }
  const out = join(dir, `${pkg.name}_${pkg.version}_all.deb`);
  await run("dpkg-deb", ["--root-owner-group", "-Zgzip", "--build", root, out], { env: { ...process.env, SOURCE_DATE_EPOCH: "1686355200" } });
  await rm(root, { recursive: true, force: true });
  return out;
}

/** Writes pool/, dists/SUITE/main/binary-ARCH/Packages and dists/SUITE/Release under `dir`. */
async function writeRepository(dir: string, debs: readonly string[], suite: string): Promise<void> {
  const pool = join(dir, "pool");
  await mkdir(pool, { recursive: true });
  const arch = (await run("dpkg", ["--print-architecture"])).stdout.trim();
  const stanzas: string[] = [];
  for (const deb of debs) {
    const name = deb.slice(deb.lastIndexOf("/") + 1);
    await copyFile(deb, join(pool, name));
    const fields = (await run("dpkg-deb", ["-f", deb], { maxBuffer: 1024 * 1024 })).stdout.trimEnd();
    const bytes = await readFile(deb);
    stanzas.push(`${fields}\nFilename: pool/${name}\nSize: ${bytes.length}\nSHA256: ${createHash("sha256").update(bytes).digest("hex")}\n`);
  }
  const rel = `main/binary-${arch}/Packages`;
  const dists = join(dir, "dists", suite);
  await mkdir(join(dists, `main/binary-${arch}`), { recursive: true });
  const packages = Buffer.from(stanzas.join("\n"));
  await writeFile(join(dists, rel), packages);
  const release = [
    `Origin: mvm-test`,
    `Label: mvm-test`,
    `Suite: ${suite}`,
    `Codename: ${suite}`,
    `Date: Sat, 10 Jun 2023 00:00:00 UTC`,
    `Architectures: ${arch}`,
    `Components: main`,
    `SHA256:`,
    ` ${createHash("sha256").update(packages).digest("hex")} ${packages.length} ${rel}`,
  ];
  await writeFile(join(dists, "Release"), `${release.join("\n")}\n`);
}

/**
 * Makes a repository of the kept .deb files plus `extra` packages and serves it on a test host.
 * @throws Error (saying to run setup.sh) when no .deb files were kept.
 */
export async function startLocalMirror(options: { suite?: string; extra?: (mirrorIp: string) => readonly TestPackage[] } = {}): Promise<LocalMirror> {
  const suite = options.suite ?? "bookworm";
  const debs = await keptDebs();
  const dir = await mkdtemp(join(tmpdir(), "mvm-mirror-"));
  await chmod(dir, 0o755);
  let network: TestNetwork | undefined;
  let server: ChildProcess | undefined;
  try {
    network = await startTestNetwork({ hosts: 1 });
    const host = network.hosts[0];
    if (!host) throw new Error("test network has no host");
    const made: string[] = [];
    for (const pkg of options.extra?.(host.ip) ?? []) made.push(await buildPackage(dir, pkg));
    await writeRepository(join(dir, "repo"), [...debs, ...made], suite);
    const child = spawn("ip", ["netns", "exec", host.netns, process.execPath, SERVER_JS, join(dir, "repo"), host.ip, "80"], { stdio: ["ignore", "pipe", "inherit"] });
    server = child;
    const log: string[] = [];
    await new Promise<void>((resolve, reject) => {
      let buf = "";
      child.once("exit", (code) => reject(new Error(`mirror server exited with ${code}`)));
      child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
        buf += chunk;
        const lines = buf.split("\n");
        buf = lines.pop() ?? "";
        for (const l of lines) {
          if (l.startsWith("ready ")) resolve();
          else if (log.length < 10_000) log.push(l);
        }
      });
    });
    const net = network;
    return {
      line: `deb [trusted=yes] http://${host.ip}/ ${suite} main`,
      network: net,
      log,
      async close() {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise<void>((r) => child.once("exit", () => r()));
          child.kill("SIGKILL");
          await exited;
        }
        await net.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    server?.kill("SIGKILL");
    await network?.close();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

