/**
 * The builder boundary: how a `debian:` image is built without host root.
 *
 * The engine (root) starts, with util-linux `unshare`, fresh network, mount, pid (with its own
 * /proc), ipc and uts namespaces. In them it hides the engine's state and the home directories
 * under empty tmpfs mounts, brings loopback up, then drops to the build user with `setpriv` for
 * everything else: a small forwarder (_build-proxy.ts) on 127.0.0.1, and mmdebstrap in
 * `--mode=unshare`, which maps the build's uids 0–65535 onto the user's subordinate range. So
 * maintainer scripts run as "root" only inside a user namespace, as ids that are nobody on the
 * host. The namespace has no route: apt reaches the mirror only through the forwarder, a Unix
 * socket, and the engine's egress gateway, whose policy allows exactly the mirror's hosts.
 * The build writes only into a fresh directory owned by the build user, and gets a private /tmp.
 *
 * bubblewrap is not used here: it always sets no_new_privs, which stops the setuid `newuidmap`
 * that `--mode=unshare` needs.
 */
import { chmod, chown, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { join, resolve as resolvePath, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { AdmissionError, type NetworkPolicyJson, type NetworkRule } from "@mvm/protocol";
import { EgressGateway, type EgressSandbox } from "../egress/gateway.js";
import type { TestAllowance } from "../egress/address-floor.js";
import { EgressResolver } from "../egress/resolver.js";
import type { BuildUser } from "./build-user.js";
import { quote } from "./ref.js";

const PROXY_JS = fileURLToPath(new URL("./_build-proxy.js", import.meta.url));
/** Port the forwarder listens on inside the build's network namespace. */
export const BUILD_PROXY_PORT = 3142;

/** Paths hidden from every build when they exist (besides the engine's state directory). */
export const HIDDEN_HOST_PATHS: readonly string[] = ["/root", "/home", "/var/lib/mvm", "/etc/mvm", "/run/mvm", "/var/cache/mvm"];

const WRAPPER = `set -eu
uid=$1 gid=$2 node=$3 proxy=$4 sock=$5 port=$6 ready=$7 tmp=$8 n=$9
shift 9
# Node and the forwarder are bound into the build dir first, so hiding paths and the private /tmp
# cannot take them away (a checkout under /tmp or /root), and the build user needs no access to
# the paths they came from.
bd=\${tmp%/tmp}
: > "$bd/node"; mount --bind "$node" "$bd/node"; node=$bd/node
: > "$bd/proxy.mjs"; mount --bind "$proxy" "$bd/proxy.mjs"; proxy=$bd/proxy.mjs
while [ "$n" -gt 0 ]; do mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec mvm-hidden "$1"; shift; n=$((n - 1)); done
mount --bind "$tmp" /tmp
ip link set lo up
setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$node" "$proxy" "$sock" "$port" "$ready" &
i=0
while [ ! -e "$ready" ]; do
  i=$((i + 1))
  if [ "$i" -gt 400 ]; then echo "E: the build proxy did not start" >&2; exit 1; fi
  sleep 0.05
done
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"`;

/** The hosts (and ports) the deb lines name: the only places a build may connect to. */
export function mirrorEndpoints(mirrorLines: readonly string[]): { host: string; port: number; scheme: "http" | "https" }[] {
  const out = new Map<string, { host: string; port: number; scheme: "http" | "https" }>();
  for (const line of mirrorLines) {
    const uri = line.replace(/\[[^\]]*\]/, " ").trim().split(/\s+/)[1];
    let url: URL;
    try {
      url = new URL(uri ?? "");
    } catch {
      throw new AdmissionError(`Cannot build: mirror line ${quote(line)} has no http(s) URI`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new AdmissionError(`Cannot build: mirror ${quote(uri ?? "")} is not http(s)`);
    const scheme = url.protocol === "https:" ? "https" : "http";
    const port = url.port === "" ? (scheme === "https" ? 443 : 80) : Number(url.port);
    const host = url.hostname.replace(/^\[|\]$/g, "");
    out.set(`${scheme}://${host}:${port}`, { host, port, scheme });
  }
  return [...out.values()];
}

/** The egress policy of a build: the mirror endpoints, nothing else. */
export function buildPolicy(mirrorLines: readonly string[]): NetworkPolicyJson {
  const rules: NetworkRule[] = [];
  for (const { host, port, scheme } of mirrorEndpoints(mirrorLines)) {
    if (/^[0-9.]+$/.test(host)) rules.push({ kind: "cidr", cidr: `${host}/32`, ports: [port] });
    else if (host.includes(":")) rules.push({ kind: "cidr", cidr: `${host}/128`, ports: [port] });
    else if (port === (scheme === "https" ? 443 : 80)) rules.push({ kind: scheme, host });
    else rules.push({ kind: "tcp", host, port });
  }
  return { version: 1, default: "deny", rules };
}

export interface BoundaryOptions {
  readonly user: BuildUser;
  readonly mirrorLines: readonly string[];
  /** The engine's state directory (hidden from the build). */
  readonly stateDir: string;
  /** Where the build dir is made; not below /tmp, which the build gets a private one of. @default "/var/tmp" */
  readonly buildRoot?: string;
  /** Test-only: lets the gateway reach test hosts in 198.18.0.0/15. */
  readonly testAllowance?: TestAllowance;
  /** Addresses of the mirror the operator vouches for, let through the gateway's address floor. */
  readonly mirrorAddresses?: readonly string[];
  /** Called with each egress decision the gateway denies (for progress output). */
  readonly onDenied?: (host: string, reason: string) => void;
}

/** A running boundary: its build dir, the wrapper argv prefix, and the gateway to close after. */
export class BuildBoundary implements AsyncDisposable {
  /**
   * Fresh directory owned by the build user (0711): the output tar, the proxy socket, and `tmp/`
   * (mmdebstrap's TMPDIR), owned by the first id of the user's subordinate range.
   */
  readonly buildDir: string;
  readonly #server: Server;
  readonly #gateway: EgressGateway;
  readonly #hidden: readonly string[];
  readonly #user: BuildUser;
  /** Egress decisions denied during the build ("host:port: reason"), newest last, at most 100. */
  readonly denied: readonly string[];

  private constructor(buildDir: string, server: Server, gateway: EgressGateway, hidden: readonly string[], user: BuildUser, denied: string[]) {
    this.denied = denied;
    this.buildDir = buildDir;
    this.#server = server;
    this.#gateway = gateway;
    this.#hidden = hidden;
    this.#user = user;
  }

  /** Makes the build dir, the gateway and its socket. Close it (or `await using`) after the build. */
  static async open(options: BoundaryOptions): Promise<BuildBoundary> {
    const { user } = options;
    const buildDir = await mkdtemp(join(options.buildRoot ?? "/var/tmp", "mvm-build-"));
    let server: Server | undefined;
    let gateway: EgressGateway | undefined;
    try {
      // `tmp/` becomes the build's /tmp (mmdebstrap makes its chroot there, partly from inside its
      // user namespace): sticky and world-writable like /tmp, reachable only through the 0711 dir.
      await mkdir(join(buildDir, "tmp"));
      await chmod(join(buildDir, "tmp"), 0o1777);
      await chown(buildDir, user.uid, user.gid);
      await chmod(buildDir, 0o711);
      const policy = buildPolicy(options.mirrorLines);
      gateway = new EgressGateway({
        resolver: new EgressResolver(),
        ...(options.testAllowance ? { testAllowance: options.testAllowance } : {}),
        ...(options.mirrorAddresses ? { vouchedAddresses: options.mirrorAddresses } : {}),
      });
      const denied: string[] = [];
      const sandbox: EgressSandbox = {
        id: `build-${buildDir.slice(-6)}`,
        policy: () => policy,
        secrets: [],
        event: (e) => {
          if (e.decision !== "denied") return;
          const target = `${e.host ?? e.ip ?? "?"}:${e.port}`;
          denied.push(`${target}: ${e.reason ?? "denied"}`);
          if (denied.length > 100) denied.shift();
          options.onDenied?.(target, e.reason ?? "denied");
        },
      };
      const socketPath = join(buildDir, "proxy.sock");
      const gw = gateway;
      server = createServer((conn) => gw.handle(conn, sandbox));
      await new Promise<void>((resolve, reject) => {
        server?.once("error", reject);
        server?.listen(socketPath, () => resolve());
      });
      await chown(socketPath, user.uid, user.gid);
      const hidden = await hiddenPaths([resolvePath(options.stateDir), ...HIDDEN_HOST_PATHS], [buildDir]);
      return new BuildBoundary(buildDir, server, gw, hidden, user, denied);
    } catch (err) {
      server?.close();
      await gateway?.close();
      await rm(buildDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** The argv that runs `command` (argv[0] a program on PATH) inside the boundary, as the build user. */
  wrap(command: readonly string[]): string[] {
    return [
      "unshare",
      "--net",
      "--mount",
      "--propagation",
      "private",
      "--pid",
      "--fork",
      "--kill-child",
      "--mount-proc",
      "--ipc",
      "--uts",
      "--",
      "/bin/sh",
      "-c",
      WRAPPER,
      "mvm-build",
      String(this.#user.uid),
      String(this.#user.gid),
      process.execPath,
      PROXY_JS,
      join(this.buildDir, "proxy.sock"),
      String(BUILD_PROXY_PORT),
      join(this.buildDir, "proxy.ready"),
      join(this.buildDir, "tmp"),
      String(this.#hidden.length),
      ...this.#hidden,
      ...command,
    ];
  }

  /** The proxy URL apt uses inside the boundary. */
  get proxyUrl(): string {
    return `http://127.0.0.1:${BUILD_PROXY_PORT}`;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Stops the gateway and removes the build dir. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await this.#gateway.close();
    await closed;
    await rm(this.buildDir, { recursive: true, force: true });
  }
}

/** The candidates that exist as directories and hold none of `keep`. */
async function hiddenPaths(candidates: readonly string[], keep: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const path of new Set(candidates)) {
    const info = await stat(path).catch(() => undefined);
    if (!info?.isDirectory()) continue;
    if (path === "/" || keep.some((k) => k === path || k.startsWith(path.endsWith(sep) ? path : path + sep))) continue;
    out.push(path);
  }
  return out;
}
