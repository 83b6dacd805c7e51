/**
 * Building `debian:` images with mmdebstrap: the host's apt mirror, the command line, progress
 * parsing and the process lifetime (abort kills the whole tree).
 *
 * mmdebstrap always runs `--mode=unshare`, never as host root: as an engine running as root, it
 * runs as the build user inside the builder boundary (builder.ts); otherwise as the engine's own
 * unprivileged uid. A wrapper argv (the boundary's) may be put in front of it.
 */
import { execFile, spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { AbortedError, AdmissionError, type ProgressEvent } from "@mvm/protocol";
import { quote } from "./ref.js";

/**
 * SOURCE_DATE_EPOCH given to mmdebstrap (2023-06-10, the Debian 12 release date): the same
 * options and the same mirror state then give the same tar, byte for byte.
 */
export const DEBIAN_SOURCE_DATE_EPOCH = 1686355200;

export interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
}

/** Parses deb822 `.sources` text (stanzas separated by blank lines). Disabled stanzas are skipped. */
export function parseDeb822Sources(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    let last: string | undefined;
    for (const line of stanza.split("\n")) {
      if (line.startsWith("#") || line.trim() === "") continue;
      if (/^[ \t]/.test(line)) {
        if (last !== undefined) fields.set(last, `${fields.get(last) ?? ""} ${line.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):(.*)$/.exec(line);
      if (!m?.[1]) continue;
      last = m[1].toLowerCase();
      fields.set(last, (m[2] ?? "").trim());
    }
    if (fields.get("enabled")?.toLowerCase() === "no") continue;
    const words = (key: string): string[] => (fields.get(key) ?? "").split(/\s+/).filter(Boolean);
    const source = { types: words("types"), uris: words("uris"), suites: words("suites"), components: words("components") };
    if (source.types.length > 0 && source.uris.length > 0 && source.suites.length > 0) out.push(source);
  }
  return out;
}

/** Parses one-line `sources.list` text: `deb [options] URI SUITE COMPONENT…`. */
export function parseOneLineSources(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").replace(/\[[^\]]*\]/, " ").trim();
    const [type, uri, suite, ...components] = line.split(/\s+/);
    if (!type || !uri || !suite) continue;
    out.push({ types: [type], uris: [uri], suites: [suite], components });
  }
  return out;
}

/** Reads the host's apt sources from `etcApt` (sources.list and sources.list.d/*.list|*.sources). */
export async function readHostAptSources(etcApt = "/etc/apt"): Promise<AptSource[]> {
  const out: AptSource[] = [];
  const main = await readFile(join(etcApt, "sources.list"), "utf8").catch(() => undefined);
  if (main !== undefined) out.push(...parseOneLineSources(main));
  const dir = join(etcApt, "sources.list.d");
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  for (const name of names) {
    if (!/^[A-Za-z0-9_.-]+\.(list|sources)$/.test(name)) continue;
    const text = await readFile(join(dir, name), "utf8").catch(() => undefined);
    if (text === undefined) continue;
    out.push(...(name.endsWith(".sources") ? parseDeb822Sources(text) : parseOneLineSources(text)));
  }
  return out;
}

const URI_RE = /^https?:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?(\/[A-Za-z0-9._~%+/-]*)?$/;
const COMPONENT_RE = /^[a-z0-9-]{1,64}$/;

/**
 * The mirror lines mmdebstrap gets for `suite`, taken from the host's sources: when the host
 * lists `suite`, its `suite`, `suite-updates` and `suite-security` entries as configured; for
 * another suite, `suite` alone from the host's main archive URI. Only http(s) URIs are used.
 * @throws AdmissionError when the host has no usable Debian mirror.
 */
export function mirrorLinesFor(suite: string, sources: readonly AptSource[]): string[] {
  const usable = sources
    .filter((s) => s.types.includes("deb"))
    .map((s) => ({ ...s, uris: s.uris.filter((u) => URI_RE.test(u)), components: s.components.filter((c) => COMPONENT_RE.test(c)) }))
    .filter((s) => s.uris.length > 0);
  const wanted = new Set([suite, `${suite}-updates`, `${suite}-security`]);
  const lines: string[] = [];
  for (const s of usable) {
    for (const uri of s.uris) {
      for (const name of s.suites) if (wanted.has(name)) lines.push(line(uri, name, s.components));
    }
  }
  if (usable.some((s) => s.suites.includes(suite))) return lines;
  const base = usable.find((s) => s.suites.some((name) => !name.includes("-") && !name.includes("/")));
  const uri = base?.uris[0];
  if (base === undefined || uri === undefined) {
    throw new AdmissionError(`Cannot build a Debian ${quote(suite)} image: the host has no http(s) Debian mirror configured`, {
      hint: "add a Debian mirror to /etc/apt/sources.list.d/ (e.g. debian.sources)",
    });
  }
  return [line(uri, suite, base.components)];
}

function line(uri: string, suite: string, components: readonly string[]): string {
  return `deb ${uri} ${suite} ${(components.length > 0 ? components : ["main"]).join(" ")}`;
}

export interface MmdebstrapPlan {
  suite: string;
  packages: readonly string[];
  outputTar: string;
  mirrors: readonly string[];
  /** HTTP proxy apt must use for every download (the builder boundary's forwarder). */
  proxyUrl?: string;
  /** Directory (outside the chroot) the downloaded .deb files are copied to before cleanup. */
  keepDebsDir?: string;
}

/**
 * Resets host-specific files: mmdebstrap copies the host's resolv.conf and hostname in. They stay
 * (empty, or "sandbox") so a backend can mount over them in a read-only root.
 */
const HOST_FILES_HOOK =
  'rm -f "$1/etc/resolv.conf" "$1/etc/hostname" && : > "$1/etc/resolv.conf" && echo sandbox > "$1/etc/hostname"';

/** The argv that builds the image (argv[0] is the program). Packages must already be validated. */
export function mmdebstrapArgv(plan: MmdebstrapPlan): string[] {
  const args = [
    "mmdebstrap",
    "--variant=minbase",
    "--mode=unshare",
    "--format=tar",
    '--aptopt=Acquire::Retries "3"',
    `--customize-hook=${HOST_FILES_HOOK}`,
  ];
  if (plan.proxyUrl !== undefined) {
    args.push(`--aptopt=Acquire::http::Proxy "${plan.proxyUrl}"`, `--aptopt=Acquire::https::Proxy "${plan.proxyUrl}"`);
  }
  if (plan.keepDebsDir !== undefined) {
    // The downloaded archives stay in the chroot until the customize phase, are copied out, then
    // removed, so the image is the same with or without keeping them.
    args.push(
      "--skip=essential/unlink",
      '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
      `--customize-hook=sync-out /var/cache/apt/archives ${plan.keepDebsDir}`,
      '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
    );
  }
  if (plan.packages.length > 0) args.push(`--include=${plan.packages.join(",")}`);
  args.push(plan.suite, plan.outputTar, ...plan.mirrors);
  return args;
}

const STEPS: readonly [RegExp, string, number][] = [
  [/^I: running apt-get update/, "update", 0.05],
  [/^I: downloading packages/, "download", 0.15],
  [/^I: extracting archives/, "extract", 0.35],
  [/^I: installing essential packages/, "install", 0.45],
  [/^I: installing remaining packages/, "install", 0.65],
  [/^I: cleaning package lists/, "cleanup", 0.85],
  [/^I: creating tarball/, "tarball", 0.9],
  [/^I: success in/, "built", 1],
];

/**
 * Turns one line of mmdebstrap's stderr into a progress event; `fraction` is the share of the
 * mmdebstrap run done when the step starts. Lines that are not `I:`/`W:` messages give undefined.
 */
export function parseProgressLine(line: string): ProgressEvent | undefined {
  for (const [re, phase, fraction] of STEPS) {
    if (re.test(line)) return { phase, message: line.slice(3).replace(/\.\.\.$/, ""), fraction };
  }
  if (line.startsWith("I: ") || line.startsWith("W: ")) return { phase: "build", message: line.slice(3) };
  return undefined;
}

export interface RunOptions {
  /** Shown in error messages, e.g. the canonical reference. */
  ref: string;
  /** Private directory for mmdebstrap's own temp files (TMPDIR). */
  workDir: string;
  /** Working directory of the process. @default workDir */
  cwd?: string;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Time between SIGTERM and SIGKILL of the process group on abort. @default 10000 */
  killGraceMs?: number;
  /** Puts a wrapper in front of mmdebstrap's argv (the builder boundary). */
  wrap?: (argv: string[]) => string[];
  /** HOME of the build. @default "/root" */
  home?: string;
}

const MAX_LINE_CHARS = 4096;
const TAIL_LINES = 40;

/**
 * Runs mmdebstrap to completion. On abort, sends SIGTERM to its process group, SIGKILL after
 * `killGraceMs`, waits for it to exit and throws AbortedError.
 * @throws AdmissionError when mmdebstrap is missing or fails.
 */
export async function runMmdebstrap(plan: MmdebstrapPlan, options: RunOptions): Promise<void> {
  const { signal, onProgress } = options;
  if (signal?.aborted) throw new AbortedError(`Build of image ${quote(options.ref)} aborted`, { cause: signal.reason });
  const argv = mmdebstrapArgv(plan);
  const [command, ...args] = options.wrap ? options.wrap(argv) : argv;
  const env: NodeJS.ProcessEnv = {
    PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
    LC_ALL: "C.UTF-8",
    HOME: options.home ?? "/root",
    TMPDIR: options.workDir,
    SOURCE_DATE_EPOCH: String(DEBIAN_SOURCE_DATE_EPOCH),
  };
  if (plan.proxyUrl !== undefined) {
    env["http_proxy"] = plan.proxyUrl;
    env["https_proxy"] = plan.proxyUrl;
  } else {
    for (const key of ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]) {
      const value = process.env[key];
      if (value !== undefined) env[key] = value;
    }
  }
  const child = spawn(command as string, args, { cwd: options.cwd ?? options.workDir, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });

  const tail: string[] = [];
  let partial = "";
  const onLine = (raw: string): void => {
    const text = raw.length > MAX_LINE_CHARS ? `${raw.slice(0, MAX_LINE_CHARS)}…` : raw;
    tail.push(text);
    if (tail.length > TAIL_LINES) tail.shift();
    const event = parseProgressLine(text);
    if (event) onProgress?.(event);
  };
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    if (partial.length > MAX_LINE_CHARS) {
      onLine(partial);
      partial = "";
    }
    for (const l of lines) onLine(l);
  });
  child.stdout.resume();

  let killTimer: NodeJS.Timeout | undefined;
  let exited = false;
  const killGroup = (sig: NodeJS.Signals): void => {
    if (exited || child.pid === undefined) return;
    try {
      process.kill(-child.pid, sig);
    } catch {
      // the group is already gone
    }
  };
  const onAbort = (): void => {
    killGroup("SIGTERM");
    killTimer = setTimeout(() => killGroup("SIGKILL"), options.killGraceMs ?? 10_000);
  };
  signal?.addEventListener("abort", onAbort, { once: true });

  let outcome: { code: number | null; signal: NodeJS.Signals | null };
  try {
    outcome = await new Promise((resolve, reject) => {
      child.once("error", reject);
      child.once("exit", () => {
        exited = true;
      });
      child.once("close", (code, sig) => resolve({ code, signal: sig }));
    });
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
    throw new AdmissionError(`Cannot build image ${quote(options.ref)}: cannot run ${quote(command ?? "")}: ${(err as Error).message}`, {
      cause: err,
      ...(missing ? { hint: "install mmdebstrap (apt-get install mmdebstrap)" } : {}),
    });
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (killTimer) clearTimeout(killTimer);
  }
  if (partial !== "") onLine(partial);
  if (signal?.aborted) throw new AbortedError(`Build of image ${quote(options.ref)} aborted`, { cause: signal.reason });
  if (outcome.code !== 0) {
    const how = outcome.code === null ? `was killed by ${outcome.signal ?? "a signal"}` : `exited with code ${outcome.code}`;
    const errorLine = [...tail].reverse().find((l) => l.startsWith("E: "));
    throw new AdmissionError(`Cannot build image ${quote(options.ref)}: mmdebstrap ${how}${errorLine ? `: ${errorLine.slice(3)}` : ""}`, {
      cause: new Error(tail.join("\n")),
      hint: "check that the package names exist in the suite and that the mirror is reachable",
    });
  }
}

/** mmdebstrap's version, e.g. "1.3.5", from `mmdebstrap --version`; "unknown" when it cannot tell. */
export async function mmdebstrapVersion(): Promise<string> {
  return new Promise((resolve) => {
    execFile("mmdebstrap", ["--version"], { timeout: 10_000, maxBuffer: 4096 }, (err, stdout) => {
      const m = /^mmdebstrap ([0-9A-Za-z.+~-]{1,64})\s*$/.exec(String(stdout).trim());
      resolve(err || !m?.[1] ? "unknown" : m[1]);
    });
  });
}
