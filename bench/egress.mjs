// Egress gateway figures (`node bench/run.mjs egress`). A sink and an echo server run on a test
// host (a network namespace joined by a veth pair); the same client reaches them directly and
// through the gateway (CONNECT, the leg a sandbox's relay stream takes), in one run:
//   - throughput: bytes/s pushed to the sink, gateway vs direct (target >= 80 %)
//   - connect latency: time to a usable connection (gateway: CONNECT answered 200, which includes
//     the gateway's DNS lookup and its own connect), p50 added over direct (target <= 1 ms)
//   - memory: gateway process heap+external growth per 100 idle concurrent tunnels
// Plus the relay path without a sandbox (the agent's relay in a child process, a Unix socket, the
// host multiplexer, the gateway) and the whole path from inside a namespace sandbox (target >= 60 %).
// Beside each throughput figure: CPU per GiB moved for each process, which the machine's load
// moves much less than it moves throughput.
import { fork } from "node:child_process";
import { performance } from "node:perf_hooks";
import { mkdtemp, rm } from "node:fs/promises";
import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";

const ENGINE_DIST = new URL("../packages/engine/dist/", import.meta.url);
const MiB = 1024 * 1024;
const THROUGHPUT_MIB = Number(process.env.BENCH_EGRESS_MIB ?? 256);
const CONNECT_RUNS = Number(process.env.BENCH_EGRESS_CONNECTS ?? 1000);
const TUNNELS = Number(process.env.BENCH_EGRESS_TUNNELS ?? 500);

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    emitter.once(event, resolve);
    emitter.once("error", reject);
  });
}

/** CPU time (user + system) a process has used so far, in ms, from /proc (10 ms resolution). */
function processCpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/**
 * Runs `push` and returns its MiB/s plus the CPU it cost per GiB moved, in ms: this process (the
 * gateway, the relay's host side) and each named child. CPU per GiB does not depend on how busy
 * the machine is the way throughput does.
 */
async function measuredPush(push, bytes, children = {}) {
  const before = Object.fromEntries(Object.entries(children).map(([k, pid]) => [k, processCpuMs(pid)]));
  const c0 = process.cpuUsage();
  const mibPerS = await push();
  const own = process.cpuUsage(c0);
  const perGiB = (ms) => Math.round((ms * 1024 * MiB) / bytes);
  const cpu = { gateway: perGiB((own.user + own.system) / 1000) };
  for (const [k, pid] of Object.entries(children)) cpu[k] = perGiB(processCpuMs(pid) - before[k]);
  return { mibPerS, cpu };
}

/** Pids of this process's descendants whose command line starts with `prefix` and includes `needle` (from /proc). */
function descendantsRunning(prefix, needle) {
  const parent = new Map();
  for (const name of readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      parent.set(Number(name), Number(readFileSync(`/proc/${name}/stat`, "utf8").split(") ")[1].split(" ")[1]));
    } catch {
      // Gone meanwhile.
    }
  }
  const isOurs = (pid) => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; p = parent.get(p) ?? 0, hops++) if (p === process.pid) return true;
    return false;
  };
  return [...parent.keys()].filter((pid) => {
    if (!isOurs(pid)) return false;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      return cmdline.startsWith(prefix) && cmdline.includes(needle);
    } catch {
      return false;
    }
  });
}

/** p50 of each process's CPU per GiB over runs. */
function cpuSummary(runs, summary) {
  const out = { unit: "CPU ms per GiB moved" };
  for (const k of Object.keys(runs[0].cpu)) out[k] = summary(runs.map((r) => r.cpu[k])).p50;
  return out;
}

/** The client side runs in a child process, as a sandbox's process would: it shares neither the gateway's event loop nor its process. */
class Client {
  constructor() {
    this.child = fork(new URL("./egress-client.mjs", import.meta.url), [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.next = 1;
    this.waiting = new Map();
    this.exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.on("message", (m) => {
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (m.error) w.reject(new Error(m.error));
      else w.resolve(m.result);
    });
  }
  call(op, args) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.child.send({ id, op, ...args });
    });
  }
  async close() {
    if (this.child.connected) this.child.send({ id: 0, op: "exit" });
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Starts the agent's relay in a child process, connected to a host multiplexer whose streams go to `gateway`. */
export async function startAgentRelay(gateway, sandbox) {
  const { RelayMux } = await import("@mvm/protocol");
  const dir = await mkdtemp(join(tmpdir(), "mvm-bench-relay-"));
  const path = join(dir, "relay.sock");
  let channel;
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    channel = socket;
    const mux = new RelayMux(socket, socket, { role: "host" });
    mux.on("stream", (stream) => gateway.handle(stream, sandbox));
    mux.on("error", () => mux.close());
    socket.on("error", () => mux.close());
  });
  server.listen(path);
  await once(server, "listening");
  // The node options the engine starts a sandbox's agent with. This agent loads only the relay,
  // so its heap is smaller than a real agent's and V8 collects it more often: its CPU figure
  // overstates what garbage collection costs the agent in a sandbox (see the from-sandbox figure).
  const { agentRuntimeCommand } = await import(new URL("runtime/agent-runtime.js", ENGINE_DIST).href);
  const command = agentRuntimeCommand();
  const execArgv = command.slice(command.findIndex((a) => a.endsWith("/bin/node")) + 1, command.findIndex((a) => a.endsWith("/agent.cjs")));
  const child = fork(new URL("./egress-agent.mjs", import.meta.url), [path], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const { port } = await once(child, "message");
  return {
    port,
    pid: child.pid,
    async close() {
      child.disconnect();
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      channel?.destroy();
      server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function benchEgress({ log, summary, ratio }) {
  const { testNetworkSupport, startTestNetwork } = await import(new URL("egress/_test-hosts.js", ENGINE_DIST).href);
  const support = testNetworkSupport();
  if (!support.ok) return { skipped: support.reason };
  const { EgressGateway } = await import(new URL("egress/gateway.js", ENGINE_DIST).href);
  const { EgressResolver } = await import(new URL("egress/resolver.js", ENGINE_DIST).href);
  const { NetworkPolicy } = await import("@mvm/protocol");

  const net = await startTestNetwork({ hosts: 1 });
  const servers = [];
  const client = new Client();
  let gateway;
  try {
    const host = net.hosts[0];
    const sink = await net.startServer(0, "sink", { port: 9000 });
    const echo = await net.startServer(0, "tcp-echo", { port: 9001 });
    await net.setDns("sink.bench.test", { A: [host.ip] });
    await net.setDns("echo.bench.test", { A: [host.ip] });
    const policy = NetworkPolicy.denyByDefault().allowTcp("sink.bench.test", 9000).allowTcp("echo.bench.test", 9001).toJSON();
    gateway = new EgressGateway({ resolver: new EgressResolver({ servers: [net.dnsServer] }), testAllowance: net.testAllowance, maxConnectionsPerSandbox: TUNNELS + 10 });
    let events = 0;
    const sandbox = { id: "sbx_benchbenchbenchbench", policy: () => policy, secrets: [], event: () => void events++ };
    const front = createServer({ allowHalfOpen: true }, (s) => gateway.handle(s, sandbox));
    front.listen(0, "127.0.0.1");
    await once(front, "listening");
    servers.push(front);
    const via = { port: front.address().port };
    const sinkTarget = { name: "sink.bench.test", ip: host.ip, port: sink.port };
    const echoTarget = { name: "echo.bench.test", ip: host.ip, port: echo.port };

    // Throughput: alternate direct and gateway runs so drift hits both alike.
    const direct = [];
    const through = [];
    const bytes = THROUGHPUT_MIB * MiB;
    const clientPid = { client: client.child.pid };
    const directRuns = [];
    const throughRuns = [];
    for (let i = 0; i < 5; i++) {
      directRuns.push(await measuredPush(() => client.call("push", { target: sinkTarget, via: undefined, bytes }), bytes, clientPid));
      throughRuns.push(await measuredPush(() => client.call("push", { target: sinkTarget, via, bytes }), bytes, clientPid));
    }
    direct.push(...directRuns.map((r) => r.mibPerS));
    through.push(...throughRuns.map((r) => r.mibPerS));
    const throughput = {
      unit: "MiB/s",
      mibPerRun: THROUGHPUT_MIB,
      direct: summary(direct),
      gateway: summary(through),
      ratioP50: ratio(summary(through).p50, summary(direct).p50),
      target: "ratioP50 >= 0.8",
      cpuDirect: cpuSummary(directRuns, summary),
      cpuGateway: cpuSummary(throughRuns, summary),
    };
    log("egress throughput", JSON.stringify(throughput));

    // The relay path without a sandbox: the agent's relay in its own process, over a Unix socket
    // to a host multiplexer that hands its streams to the gateway.
    const relayed = [];
    const relayRuns = [];
    const directAgain = [];
    {
      const agent = await startAgentRelay(gateway, sandbox);
      try {
        for (let i = 0; i < 5; i++) {
          directAgain.push(await client.call("push", { target: sinkTarget, via: undefined, bytes }));
          relayRuns.push(await measuredPush(() => client.call("push", { target: sinkTarget, via: { port: agent.port }, bytes }), bytes, { ...clientPid, agent: agent.pid }));
        }
        relayed.push(...relayRuns.map((r) => r.mibPerS));
      } finally {
        await agent.close();
      }
    }
    const relayThroughput = {
      unit: "MiB/s",
      mibPerRun: THROUGHPUT_MIB,
      direct: summary(directAgain),
      relay: summary(relayed),
      ratioP50: ratio(summary(relayed).p50, summary(directAgain).p50),
      cpuRelay: cpuSummary(relayRuns, summary),
      note: "agent relay process -> Unix socket -> host multiplexer -> gateway; no sandbox",
    };
    log("egress relay throughput", JSON.stringify(relayThroughput));

    // Connect latency.
    const dConnect = [];
    const gConnect = [];
    for (let i = 0; i < CONNECT_RUNS; i++) {
      dConnect.push(await client.call("connect", { target: echoTarget, via: undefined }));
      gConnect.push(await client.call("connect", { target: echoTarget, via }));
    }
    const connectLatency = {
      unit: "ms",
      direct: summary(dConnect),
      gateway: summary(gConnect),
      addedP50: Math.round((summary(gConnect).p50 - summary(dConnect).p50) * 1000) / 1000,
      target: "addedP50 <= 1",
      note: "the gateway's figure includes its DNS lookup of the name (a UDP round trip to the test host) and its own connect",
    };
    log("egress connect", JSON.stringify(connectLatency));

    // Memory per 100 idle tunnels.
    global.gc?.();
    await new Promise((r) => setTimeout(r, 200));
    const before = process.memoryUsage();
    await client.call("hold", { target: echoTarget, via, count: TUNNELS });
    global.gc?.();
    await new Promise((r) => setTimeout(r, 200));
    const afterMem = process.memoryUsage();
    await client.call("release", {});
    const per100 = (k) => Math.round(((afterMem[k] - before[k]) / TUNNELS) * 100 / 1024);
    const memory = {
      unit: "KiB per 100 tunnels",
      tunnels: TUNNELS,
      heapUsed: per100("heapUsed"),
      external: per100("external"),
      rss: per100("rss"),
      gcExposed: typeof global.gc === "function",
      note: "the gateway's process only: the clients run in a child process",
    };
    log("egress memory", JSON.stringify(memory));
    return { throughput, relayThroughput, connectLatency, memory, events };
  } finally {
    for (const s of servers) s.close();
    await client.close();
    await gateway?.close();
    await net.close();
  }
}

/** The whole path from a namespace sandbox: python pushes bytes through HTTPS_PROXY-style CONNECT. */
export async function benchEgressSandbox({ log, summary, ratio, openEngine, imagesDir }) {
  const { testNetworkSupport, startTestNetwork } = await import(new URL("egress/_test-hosts.js", ENGINE_DIST).href);
  const support = testNetworkSupport();
  if (!support.ok) return { skipped: support.reason };
  const { NetworkPolicy } = await import("@mvm/protocol");
  const net = await startTestNetwork({ hosts: 1 });
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-egress-"));
  const engine = await openEngine({ stateDir, imagesDir, backends: ["namespace"], egress: { dnsServers: [net.dnsServer], testAllowance: net.testAllowance } });
  try {
    const host = net.hosts[0];
    const sink = await net.startServer(0, "sink", { port: 9000 });
    await net.setDns("sink.bench.test", { A: [host.ip] });
    const sb = await engine.createSandbox({ acknowledgeContainerTier: true, network: NetworkPolicy.denyByDefault().allowTcp("sink.bench.test", 9000).toJSON() });
    const script = [
      "import socket, sys, time",
      "n = int(sys.argv[1]) * 1048576",
      's = socket.create_connection(("127.0.0.1", 3128))',
      's.sendall(b"CONNECT sink.bench.test:9000 HTTP/1.1\\r\\nHost: sink.bench.test:9000\\r\\n\\r\\n")',
      "h = b''",
      "while b'\\r\\n\\r\\n' not in h: h += s.recv(4096)",
      "buf = b'a' * 262144; t = time.time(); sent = 0",
      "while sent < n: s.sendall(buf); sent += len(buf)",
      "s.shutdown(socket.SHUT_WR); s.recv(100)",
      "print(sent / 1048576 / (time.time() - t))",
    ].join("\n");
    const rates = [];
    const runs = [];
    const hostDirect = [];
    // The agent itself, not the bubblewrap processes whose arguments name it.
    const [agentPid] = descendantsRunning("/.mvm/", "/.mvm/agent.cjs");
    const sandboxPush = async () => {
      let out = "";
      let err = "";
      const started = await engine.exec(
        sb.id,
        { argv: ["python3", "-c", script, String(THROUGHPUT_MIB)] },
        { onStdout: (c) => (out += Buffer.from(c).toString()), onStderr: (c) => (err += Buffer.from(c).toString()) },
      );
      const exit = await started.exit;
      if (exit.exitCode !== 0) throw new Error(`sandbox push failed (exit ${JSON.stringify(exit)}): ${out}${err.slice(-2000)}`);
      return Number(out.trim());
    };
    const client = new Client();
    try {
      // Alternate direct and sandbox runs so drift hits both alike.
      for (let i = 0; i < 3; i++) {
        hostDirect.push(await client.call("push", { target: { name: "sink.bench.test", ip: host.ip, port: sink.port }, via: undefined, bytes: THROUGHPUT_MIB * MiB }));
        const run = await measuredPush(sandboxPush, THROUGHPUT_MIB * MiB, agentPid === undefined ? {} : { agent: agentPid });
        runs.push(run);
        rates.push(run.mibPerS);
      }
    } finally {
      await client.close();
    }
    const r = {
      unit: "MiB/s",
      sandboxThroughRelay: summary(rates),
      hostDirect: summary(hostDirect),
      ratioP50: ratio(summary(rates).p50, summary(hostDirect).p50),
      target: "ratioP50 >= 0.6",
      cpuSandbox: { ...cpuSummary(runs, summary), note: "gateway is the engine's process (relay host side and gateway); agent is the sandbox's agent" },
    };
    log("egress from a sandbox", JSON.stringify(r));
    await engine.killSandbox(sb.id);
    return r;
  } finally {
    await engine.close();
    await net.close();
    await rm(stateDir, { recursive: true, force: true });
  }
}
