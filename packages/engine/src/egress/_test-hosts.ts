/**
 * Test hosts for egress tests: network namespaces joined to the host by veth pairs, with
 * addresses in 198.18.0.0/15 (the benchmarking range: the gateway's floor refuses it, and only the
 * test allowance a test passes to the gateway in code opens a test host's address), each running
 * `_test-host-server.js` for its servers; the first also runs a DNS server. Needs root and
 * iproute2. Everything is removed by close(), and namespaces left by a killed test run are swept
 * by the next one.
 *
 * No test traffic leaves the machine, even to a test host that is gone: while any test network
 * exists, the host's main routing table holds `unreachable 198.18.0.0/15`, so an address of the
 * range is reached only through the more specific route of a live test host's veth, and a
 * connection to any other (or to a removed host) fails with ENETUNREACH instead of taking the
 * default route. The last test network to close removes the guard route.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { SandboxCa } from "./sandbox-ca.js";

export interface TestHost {
  readonly netns: string;
  /** The host's address inside its namespace. */
  readonly ip: string;
  /** The engine's host's end of the veth pair (a host address). */
  readonly hostSideIp: string;
  /** The host's end of the veth pair (an interface of the engine's host). */
  readonly hostSideDevice: string;
  /** The namespace's end of the veth pair. */
  readonly device: string;
}

export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: Record<string, string | string[]>;
  readonly sni?: string;
  readonly body: string;
}

export interface TestServer {
  readonly host: TestHost;
  readonly port: number;
  requests(): Promise<RecordedRequest[]>;
}

export type DnsRecords = { A?: readonly string[]; AAAA?: readonly string[] };

export interface TestNetwork {
  readonly hosts: readonly TestHost[];
  /** The CA (PEM) that signed every HTTPS test server's certificate. */
  readonly caPem: string;
  /** "ip:53" of the DNS server on hosts[0]. */
  readonly dnsServer: string;
  /** The gateway's test allowance that opens exactly the test hosts' addresses (test-only). */
  readonly testAllowance: { readonly cidrs: readonly string[] };
  /** Removes test host `i` (its process, namespace and veth pair): its address no longer answers. */
  removeHost(i: number): Promise<void>;
  /** What the DNS server answers for `name`; `undefined` removes it (NXDOMAIN). */
  setDns(name: string, records: DnsRecords | undefined): Promise<void>;
  /** Starts a server on test host `i`, on its address or on `options.address` (one added to its namespace). */
  startServer(i: number, kind: "https" | "http" | "tcp-echo" | "sink", options?: { port?: number; names?: readonly string[]; address?: string }): Promise<TestServer>;
  close(): Promise<void>;
}

const SERVER_JS = fileURLToPath(new URL("./_test-host-server.js", import.meta.url));
const NETNS_PREFIX = "mvmt-";
/** The range of test host addresses, never routed off the machine while a test network exists. */
export const TEST_HOST_RANGE = "198.18.0.0/15";
let counter = 0;

function ipPath(): string | undefined {
  return ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => existsSync(p));
}

function ip(args: readonly string[], allowFail = false): string {
  const r = spawnSync(ipPath() ?? "ip", args, { encoding: "utf8" });
  if (r.status !== 0 && !allowFail) throw new Error(`ip ${args.join(" ")} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Whether test hosts can be made here; tests skip with the reason when not. */
export function testNetworkSupport(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: "test hosts need root (network namespaces and veth pairs)" };
  if (ipPath() === undefined) return { ok: false, reason: "test hosts need iproute2 (ip)" };
  const r = spawnSync(ipPath()!, ["netns", "list"], { encoding: "utf8" });
  if (r.status !== 0) return { ok: false, reason: `ip netns does not work here: ${r.stderr.trim()}` };
  return { ok: true };
}

function vethName(pid: number, n: number, side: "h" | "p"): string {
  return `mv${side}${pid % 100000}x${n}`;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes namespaces (and their veths) left by test processes that are gone. */
export function sweepTestHosts(): string[] {
  const removed: string[] = [];
  for (const line of ip(["netns", "list"], true).split("\n")) {
    const m = /^mvmt-(\d+)-(\d+)/.exec(line.trim());
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || pidAlive(pid)) continue;
    ip(["netns", "del", `${NETNS_PREFIX}${m[1]}-${m[2]}`], true);
    ip(["link", "del", vethName(pid, Number(m[2]), "h")], true);
    removed.push(line.trim());
  }
  return removed;
}

/** Test-host namespaces of live processes other than this one. */
function othersLive(): boolean {
  return ip(["netns", "list"], true)
    .split("\n")
    .some((line) => {
      const m = /^mvmt-(\d+)-/.exec(line.trim());
      return m !== null && Number(m[1]) !== process.pid && pidAlive(Number(m[1]));
    });
}

/** Installs the guard route (idempotent); every network re-installs it after making its hosts. */
function guardRange(): void {
  ip(["route", "replace", "unreachable", TEST_HOST_RANGE]);
}

/**
 * Removes the guard route when no other process has test hosts. A network starting meanwhile
 * re-installs it after making its namespace, and the re-check here re-installs it when a
 * namespace appeared between the check and the removal.
 */
function releaseGuard(): void {
  if (othersLive()) return;
  ip(["route", "del", "unreachable", TEST_HOST_RANGE], true);
  if (othersLive()) guardRange();
}

/** A /30 in 198.18.0.0/15 no interface of the host uses yet. */
function freeSubnet(): string {
  const used = ip(["-4", "-o", "addr"], true);
  for (let tries = 0; tries < 512; tries++) {
    const second = 18 + Math.floor(Math.random() * 2);
    const third = Math.floor(Math.random() * 256);
    const fourth = Math.floor(Math.random() * 64) * 4;
    const base = `198.${second}.${third}.`;
    if (!used.includes(`${base}${fourth + 1}/`) && !used.includes(`${base}${fourth + 2}/`)) return `${base}${fourth}`;
  }
  throw new Error("no free /30 in 198.18.0.0/15");
}

class HostProcess {
  readonly #child: ChildProcess;
  readonly #waiting = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  #next = 1;
  readonly ready: Promise<void>;

  constructor(netns: string) {
    this.#child = spawn(ipPath()!, ["netns", "exec", netns, process.execPath, SERVER_JS], { stdio: ["pipe", "pipe", "inherit"] });
    let buffered = "";
    let ready!: () => void;
    this.ready = new Promise((r) => (ready = r));
    this.#child.stdout!.setEncoding("utf8");
    this.#child.stdout!.on("data", (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>;
        buffered = buffered.slice(nl + 1);
        if (msg["id"] === 0) ready();
        const w = this.#waiting.get(Number(msg["id"]));
        if (!w) continue;
        this.#waiting.delete(Number(msg["id"]));
        if (msg["ok"] === true) w.resolve(msg);
        else w.reject(new Error(`test host: ${String(msg["error"])}`));
      }
    });
    this.#child.on("exit", () => {
      for (const w of this.#waiting.values()) w.reject(new Error("test host process exited"));
      this.#waiting.clear();
    });
  }

  call(cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.#child.stdin!.write(`${JSON.stringify({ ...cmd, id })}\n`);
    });
  }

  kill(): void {
    this.#child.kill("SIGKILL");
  }

  /** Kills the process and waits until it is gone. */
  async killAndWait(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.#child.once("exit", () => resolve()));
    this.#child.kill("SIGKILL");
    await exited;
  }
}

/** Creates `hosts` test hosts (default 2, at most 4) with a DNS server on the first. */
export async function startTestNetwork(options: { hosts?: number } = {}): Promise<TestNetwork> {
  const count = Math.min(4, Math.max(1, options.hosts ?? 2));
  sweepTestHosts();
  const hosts: TestHost[] = [];
  const procs: HostProcess[] = [];
  const made: { netns: string; veth: string }[] = [];
  let guarded = false;
  const close = async (): Promise<void> => {
    for (const p of procs.splice(0)) p.kill();
    for (const m of made.splice(0)) {
      ip(["netns", "del", m.netns], true);
      ip(["link", "del", m.veth], true);
    }
    if (guarded) releaseGuard();
    guarded = false;
  };
  try {
    guardRange();
    guarded = true;
    const ca = await SandboxCa.create({ sandboxId: "test-hosts" });
    for (let i = 0; i < count; i++) {
      const n = counter++;
      const netns = `${NETNS_PREFIX}${process.pid}-${n}`;
      const vh = vethName(process.pid, n, "h");
      const vp = vethName(process.pid, n, "p");
      const base = freeSubnet();
      const prefix = base.slice(0, base.lastIndexOf(".") + 1);
      const last = Number(base.slice(base.lastIndexOf(".") + 1));
      const hostSideIp = `${prefix}${last + 1}`;
      const hostIp = `${prefix}${last + 2}`;
      ip(["netns", "add", netns]);
      made.push({ netns, veth: vh });
      ip(["link", "add", vh, "type", "veth", "peer", "name", vp]);
      ip(["link", "set", vp, "netns", netns]);
      ip(["addr", "add", `${hostSideIp}/30`, "dev", vh]);
      ip(["link", "set", vh, "up"]);
      ip(["-n", netns, "addr", "add", `${hostIp}/30`, "dev", vp]);
      ip(["-n", netns, "link", "set", vp, "up"]);
      ip(["-n", netns, "link", "set", "lo", "up"]);
      hosts.push({ netns, ip: hostIp, hostSideIp, hostSideDevice: vh, device: vp });
      const proc = new HostProcess(netns);
      procs.push(proc);
      await proc.ready;
    }
    guardRange();
    await procs[0]!.call({ op: "dns", host: hosts[0]!.ip, port: 53 });
    return {
      hosts,
      caPem: ca.certPem,
      dnsServer: `${hosts[0]!.ip}:53`,
      testAllowance: { cidrs: hosts.map((h) => `${h.ip}/32`) },
      async removeHost(i) {
        const host = hosts[i];
        if (!host) throw new Error(`no test host ${i}`);
        await procs[i]?.killAndWait();
        ip(["link", "del", host.hostSideDevice], true);
        ip(["netns", "del", host.netns], true);
      },
      async setDns(name, records) {
        await procs[0]!.call({ op: "set-dns", name, records: records ?? null });
      },
      async startServer(i, kind, opts = {}) {
        const host = hosts[i];
        const proc = procs[i];
        if (!host || !proc) throw new Error(`no test host ${i}`);
        const tls = kind === "https" ? await ca.leaf(opts.names?.[0] ?? "test.invalid") : undefined;
        const r = await proc.call({ op: "serve", kind, host: opts.address ?? host.ip, port: opts.port ?? 0, ...(tls ? { keyPem: tls.keyPem, certPem: tls.certPem } : {}) });
        const server = Number(r["server"]);
        return {
          host,
          port: Number(r["port"]),
          requests: async () => (await proc.call({ op: "requests", server }))["requests"] as RecordedRequest[],
        };
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
