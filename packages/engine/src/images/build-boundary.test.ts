/**
 * The builder boundary with real builds: mmdebstrap from a local mirror (the .deb files setup.sh
 * kept, served from a test host in a network namespace), as the build user, egress only through
 * the gateway. Few builds: each takes tens of seconds.
 */
import { strict as assert } from "node:assert";
import { mkdtemp, readdir, readFile, rm, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AbortedError, AdmissionError, InvalidArgumentError, NotFoundError, PolicyDeniedError } from "@mvm/protocol";
import { startLocalMirror, type LocalMirror } from "./_debian-mirror.js";
import { buildPolicy, mirrorEndpoints } from "./builder.js";
import { findBuildUser } from "./build-user.js";
import { PROVENANCE_FILE, verifyProvenance } from "./provenance.js";
import { ImageStore } from "./store.js";
import { inspectImage } from "../capabilities/images.js";
import type { EngineCore } from "../capabilities/core.js";
import { openEngine } from "../open.js";

const isRoot = process.getuid?.() === 0;

/** The postinst of the probe package: who it runs as, on the host, and what it can reach. */
const probeScript = (mirrorIp: string): string => `#!/bin/bash
{
  echo "uid $(id -u)"
  head -n 1 /proc/self/uid_map 2>/dev/null || echo "no uid_map"
  if (exec 3<>/dev/tcp/${mirrorIp}/80) 2>/dev/null; then echo "mirror reachable"; else echo "mirror unreachable"; fi
} > /etc/mvm-probe
`;

async function buildDirs(): Promise<string[]> {
  return (await readdir("/var/tmp")).filter((n) => n.startsWith("mvm-build-"));
}

/** Processes owned by `uid` (the build user): none may outlive a build. */
/**
 * Processes of `uid` still there after `graceMs`: the kernel tears a pid namespace down after its
 * init is killed, so the last ones may be exiting when the build's own process has closed.
 */
async function processesLeft(uid: number, graceMs = 10_000): Promise<string[]> {
  const deadline = Date.now() + graceMs;
  for (;;) {
    const left = await processesOf(uid);
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function processesOf(uid: number): Promise<string[]> {
  const out: string[] = [];
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    const m = /^Uid:\s+(\d+)/m.exec(status);
    if (m && Number(m[1]) === uid) out.push(`${pid}: ${(await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).replace(/\0/g, " ")}`);
  }
  return out;
}

describe("build policy", () => {
  test("allows exactly the mirror endpoints", () => {
    const lines = [
      "deb http://deb.debian.org/debian bookworm main",
      "deb [trusted=yes] http://198.18.0.2/ bookworm main",
      "deb https://mirror.example:8443/debian bookworm main",
      "deb http://deb.debian.org/debian-security bookworm-security main",
    ];
    assert.deepEqual(mirrorEndpoints(lines).map((e) => `${e.scheme}://${e.host}:${e.port}`), [
      "http://deb.debian.org:80",
      "http://198.18.0.2:80",
      "https://mirror.example:8443",
    ]);
    assert.deepEqual(buildPolicy(lines), {
      version: 1,
      default: "deny",
      rules: [
        { kind: "http", host: "deb.debian.org" },
        { kind: "cidr", cidr: "198.18.0.2/32", ports: [80] },
        { kind: "tcp", host: "mirror.example", port: 8443 },
      ],
    });
    assert.throws(() => buildPolicy(["deb file:///srv/mirror bookworm main"]), AdmissionError);
  });
});

describe("builds refused before anything runs", () => {
  test("a misspelt suite names the nearest known one", async () => {
    const root = await mkdtemp(join(tmpdir(), "mvm-build-refuse-"));
    try {
      const store = await ImageStore.open(join(root, "images"), { stateDir: root, debianMirrors: ["deb http://198.18.0.2/ bookworm main"] });
      await assert.rejects(store.buildDebian("debian:bookwrom+python3"), (err: unknown) => err instanceof InvalidArgumentError && /did you mean "bookworm"\?/.test(err.message));
      await assert.rejects(store.ensure("debian:trixy"), (err: unknown) => err instanceof InvalidArgumentError && /did you mean "trixie"\?/.test(err.message));
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test("a missing build user is a typed error that names setup.sh", { skip: isRoot ? false : "the builder boundary is the root engine's path" }, async () => {
    const root = await mkdtemp(join(tmpdir(), "mvm-build-refuse-"));
    try {
      await writeFile(join(root, "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
      const store = await ImageStore.open(join(root, "images"), { stateDir: root, etcDir: root, debianMirrors: ["deb http://198.18.0.2/ bookworm main"] });
      await assert.rejects(store.buildDebian("debian:bookworm"), (err: unknown) => err instanceof AdmissionError && /build user "mvm-build" does not exist/.test(err.message) && /setup\.sh/.test(err.hint ?? ""));
      await writeFile(join(root, "passwd"), "mvm-build:x:999:995::/nonexistent:/usr/sbin/nologin\n");
      await writeFile(join(root, "subuid"), "mvm-build:100000:1000\n");
      await assert.rejects(findBuildUser("mvm-build", root), (err: unknown) => err instanceof AdmissionError && /no range of 65536 ids/.test(err.message));
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe("real builds in the builder boundary", { skip: isRoot ? false : "needs root (network namespaces, the build user)" }, () => {
  let mirror: LocalMirror;
  let root: string;
  before(async () => {
    mirror = await startLocalMirror({ extra: (ip) => [{ name: "mvm-probe", version: "1.0", depends: "bash", postinst: probeScript(ip) }] });
    root = await mkdtemp(join(tmpdir(), "mvm-build-"));
    await chmod(root, 0o711);
  });
  after(async () => {
    await mirror?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });
  const open = () =>
    ImageStore.open(join(root, "images"), { stateDir: root, debianMirrors: [mirror.line], buildTestAllowance: mirror.network.testAllowance, buildKillGraceMs: 5000 });

  test("runs as the build user's subordinate ids with no route out, is reproducible, and records signed provenance", async (t) => {
    const user = await findBuildUser();
    const dirsBefore = await buildDirs();
    const store = await open();
    const started = Date.now();
    const rec = await store.buildDebian("debian:bookworm+mvm-probe");
    t.diagnostic(`build ${Date.now() - started} ms, ${rec.digest}`);
    assert.ok(mirror.log.some((l) => /^GET \/pool\/mvm-probe_1\.0_all\.deb 200$/.test(l)), "packages came from the local mirror");

    const probe = await readFile(join(rec.rootfsDir, "etc/mvm-probe"), "utf8");
    t.diagnostic(probe);
    assert.match(probe, /^uid 0$/m, "the maintainer script is root inside the build");
    const map = /^\s*0\s+(\d+)\s+(\d+)\s*$/m.exec(probe);
    assert.ok(map, `uid_map in ${JSON.stringify(probe)}`);
    assert.notEqual(Number(map[1]), 0, "the build's root is not host root");
    assert.equal(Number(map[1]), user.subuid.start, "the build's root is the build user's first subordinate id");
    assert.match(probe, /^mirror unreachable$/m, "a maintainer script has no route, even to the mirror");

    const checked = await verifyProvenance(root, rec.digest);
    const p = checked.provenance;
    assert.equal(p.ref, "debian:bookworm+mvm-probe");
    assert.deepEqual(p.packages, ["mvm-probe"]);
    assert.deepEqual(p.mirrors, [mirror.line]);
    assert.equal(p.sourceDateEpoch, 1686355200);
    assert.deepEqual(p.builder, { boundary: "netns-unshare", user: user.name, uid: user.uid });
    assert.match(p.mmdebstrap.version, /^[0-9]/);
    assert.deepEqual(p.installed.find((i) => i.package === "mvm-probe"), { package: "mvm-probe", version: "1.0", architecture: "all" });
    assert.ok(p.installed.some((i) => i.package === "bash"));

    const again = Date.now();
    const rebuilt = await store.buildDebian("debian:bookworm+mvm-probe", { force: true });
    t.diagnostic(`rebuild ${Date.now() - again} ms, ${rebuilt.digest}`);
    assert.equal(rebuilt.digest, rec.digest, "two builds of one reference from one mirror state give one digest");
    assert.equal((await verifyProvenance(root, rec.digest)).digest, checked.digest, "and one provenance record");

    const core = { stateDir: root, options: { images: store } } as unknown as EngineCore;
    const inspected = await inspectImage(core, "debian:bookworm+mvm-probe");
    assert.equal(inspected.provenance.status, "verified");
    assert.equal(inspected.provenance.status === "verified" && inspected.provenance.digest, checked.digest);

    const file = join(root, "images/blobs/sha256", rec.digest.slice(7), PROVENANCE_FILE);
    const original = await readFile(file, "utf8");
    await writeFile(file, original.replace('"version":"1.0"', '"version":"1.1"'));
    await assert.rejects(verifyProvenance(root, rec.digest), (err: unknown) => err instanceof AdmissionError && /bad signature/.test(err.message));
    const tampered = await inspectImage(core, rec.digest);
    assert.equal(tampered.provenance.status, "invalid");
    await writeFile(file, original);
    await assert.rejects(verifyProvenance(root, `sha256:${"0".repeat(64)}`), NotFoundError);

    assert.deepEqual(await buildDirs(), dirsBefore, "no build dir is left");
    assert.deepEqual(await processesLeft(user.uid), [], "no build process is left");
    assert.deepEqual(await readdir(join(root, "images/tmp")), []);
  });

  test("a policy requiring provenance admits the built image, and refuses it once its record is altered", async () => {
    const store = await open();
    const rec = await store.resolve("debian:bookworm+mvm-probe");
    assert.ok(rec, "the image the test above built");
    const policyFile = join(root, "policy.json");
    await writeFile(policyFile, JSON.stringify({ version: 1, requireImageProvenance: true }), { mode: 0o644 });
    const engine = await openEngine({ stateDir: root, imagesDir: join(root, "images"), policyFile, backends: ["namespace"] });
    const file = join(root, "images/blobs/sha256", rec.digest.slice(7), PROVENANCE_FILE);
    const original = await readFile(file, "utf8");
    try {
      const sb = await engine.createSandbox({ backend: "namespace", image: "debian:bookworm+mvm-probe" });
      await engine.killSandbox(sb.id);
      await writeFile(file, original.replace('"version":"1.0"', '"version":"1.1"'));
      await assert.rejects(
        engine.createSandbox({ backend: "namespace", image: "debian:bookworm+mvm-probe" }),
        (err: unknown) => err instanceof PolicyDeniedError && /requireImageProvenance/.test(err.message),
      );
    } finally {
      await writeFile(file, original);
      await engine.close();
      await rm(policyFile, { force: true });
    }
  });

  test("an aborted build leaves no process, build dir or image", async () => {
    const user = await findBuildUser();
    const dirsBefore = await buildDirs();
    const store = await open();
    const ac = new AbortController();
    await assert.rejects(
      store.buildDebian("debian:bookworm", {
        signal: ac.signal,
        onProgress: (e) => {
          if (e.phase === "download") ac.abort();
        },
      }),
      AbortedError,
    );
    assert.deepEqual(await buildDirs(), dirsBefore);
    assert.deepEqual(await processesLeft(user.uid), []);
    assert.equal(await store.resolve("debian:bookworm"), undefined);
  });
});
