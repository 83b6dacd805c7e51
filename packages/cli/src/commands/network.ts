/**
 * `mvmctl network set|show ID`: the egress policy of a running sandbox, and `mvmctl logs`: the
 * sandbox's agent and workload logs (`--follow`: as they come), or with --network what the gateway
 * allowed and denied for it.
 */
import { AbortedError, MAX_LOG_LINES, MAX_LOG_LINE_CHARS, NetworkPolicy, checkFunctionId, type EngineApi, type LogSource, type NetworkEvent, type NetworkPolicyJson } from "@mvm/protocol";
import { defineCommand, type CommandContext } from "../command.js";
import { booleanFlag, sandboxIdArg, stringFlag } from "../flags.js";
import { POLICY_FLAGS, policyFrom } from "../network-flags.js";
import { printable } from "../text.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";
import { printFnLog } from "./fn.js";

/** How often `logs --follow` asks for new events, ms. */
const FOLLOW_INTERVAL_MS = 500;

/** One rule per line, in the words of the CLI flags. */
export function describePolicy(policy: NetworkPolicyJson): string {
  if (policy.rules.length === 0) return "deny all egress\n";
  const lines = policy.rules.map((r, i) => {
    switch (r.kind) {
      case "https":
        return `${i}: allow https ${r.host}:443`;
      case "http":
        return `${i}: allow http ${r.host}:80`;
      case "tcp":
        return `${i}: allow tcp ${r.host}:${r.port}`;
      case "cidr":
        return `${i}: allow cidr ${r.cidr} ports ${r.ports === "any" ? "any" : r.ports.join(",")}`;
    }
  });
  return `${lines.join("\n")}\ndeny everything else\n`;
}

export const networkSetCommand = defineCommand<{ id: string; policy: NetworkPolicyJson }>({
  name: "network set",
  summary: "Replace the egress policy of a running sandbox",
  usage: "ID [--allow-host HOST[:PORT]...] [--allow-cidr CIDR:PORTS...] [--deny-all]",
  details:
    "The new policy replaces the old one entirely; open connections it does not allow are closed.\n" +
    "The change is recorded in the sandbox's network events.",
  flags: { ...POLICY_FLAGS, "deny-all": { type: "boolean", description: "Allow nothing (the default policy)" } },
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse: (raw) => {
    const policy = policyFrom(raw);
    const denyAll = booleanFlag(raw, "deny-all");
    if (policy === undefined && !denyAll) throw new UsageError("Give the new policy's rules (--allow-host, --allow-cidr) or --deny-all");
    if (policy !== undefined && denyAll) throw new UsageError("--deny-all cannot be combined with --allow-host or --allow-cidr");
    return { id: sandboxIdArg(raw.positionals[0] ?? ""), policy: policy ?? NetworkPolicy.denyByDefault().toJSON() };
  },
  async run(ctx, { id, policy }) {
    return withEngine(ctx, async (engine) => {
      const info = await engine.setNetworkPolicy(id, policy, { signal: ctx.signal });
      ctx.out.human(describePolicy(info.network?.policy ?? policy));
      ctx.out.jsonResult(info);
      return 0;
    });
  },
});

export const networkShowCommand = defineCommand<{ id: string }>({
  name: "network show",
  summary: "Show the egress policy and published ports of a sandbox",
  usage: "ID",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse: (raw) => ({ id: sandboxIdArg(raw.positionals[0] ?? "") }),
  async run(ctx, { id }) {
    return withEngine(ctx, async (engine) => {
      const info = await engine.getSandbox(id, { signal: ctx.signal });
      const policy = info.network?.policy ?? NetworkPolicy.denyByDefault().toJSON();
      let text = describePolicy(policy);
      if (info.network && info.network.revision > 0) text += `(replaced ${info.network.revision} time(s), last at ${info.network.changedAt ?? "?"})\n`;
      for (const p of info.ports ?? []) text += `port ${p.guest} -> 127.0.0.1:${p.host}\n`;
      for (const s of info.secrets ?? []) text += `secret ${s.env} <- ${s.source}:${s.name} (${s.posture}; hosts ${s.hosts.join(",") || "-"})\n`;
      ctx.out.human(text);
      ctx.out.jsonResult({ network: info.network ?? null, ports: info.ports ?? [], secrets: info.secrets ?? [] });
      return 0;
    });
  },
});

/** One human line per event. */
export function formatNetworkEvent(event: NetworkEvent): string {
  if (event.type === "policy-changed") {
    return `${event.time} POLICY   ${event.rulesBefore} -> ${event.rulesAfter} rules, ${event.closedConnections} connection(s) closed`;
  }
  const target = `${event.host ?? event.ip ?? "?"}:${event.port}${event.host && event.ip ? ` (${event.ip})` : ""}`;
  const head = `${event.time} ${event.decision === "allowed" ? "ALLOWED" : "DENIED "}  ${event.protocol.padEnd(5)} ${printable(target, 300)}`;
  const tail =
    event.decision === "allowed"
      ? ` via ${event.via}, rule ${event.rule ?? "?"}, out ${event.bytesOut} B, in ${event.bytesIn} B, ${event.durationMs} ms` +
        (event.intercepted ? `, intercepted${event.secrets && event.secrets.length > 0 ? ` (secrets: ${event.secrets.join(",")})` : ""}` : "")
      : ` via ${event.via}`;
  return `${head}${tail}${event.reason ? `: ${printable(event.reason, 600)}` : ""}`;
}

export const logsCommand = defineCommand<{ id: string; follow: boolean; fn?: string; sandbox?: { source?: LogSource; tail?: number } }>({
  name: "logs",
  summary: "Show a sandbox's logs, its network events, or a function's operator log",
  usage: "ID [--source agent|workload] [-n N] [--follow] | --network ID [--follow] | --fn FUNCTION_ID",
  details:
    "Without --network or --fn: the sandbox's agent log and its commands' recent output (the last 1 MiB), secret values " +
    "replaced; with -f new lines are printed as they come until the sandbox ends or mvmctl is interrupted. With --json one JSON object per line: {source, stream?, proc?, time?, text} (logs), {seq, event} (network) " +
    "or one operator log entry (fn).",
  flags: {
    source: { type: "string", valueName: "SOURCE", description: "Only agent or only workload lines" },
    tail: { type: "string", short: "n", valueName: "N", description: "Only the last N lines (default and at most 10000)" },
    network: { type: "boolean", description: "Network events of sandbox ID (what the egress gateway allowed and denied)" },
    follow: { type: "boolean", short: "f", description: "Keep printing new lines (or network events) until the sandbox stops or mvmctl is interrupted" },
    fn: { type: "string", valueName: "ID", description: "The operator log of function ID: its failed calls by errorId, with their stacks" },
  },
  positionals: { min: 0, max: 1 },
  connection: "daemon",
  parse: (raw) => {
    const fnId = stringFlag(raw, "fn");
    if (fnId !== undefined) {
      if (raw.positionals.length > 0 || booleanFlag(raw, "network")) throw new UsageError("--fn takes no sandbox id and no --network", { hint: "mvmctl logs --fn add" });
      return { id: "", follow: false, fn: checkFunctionId(fnId) };
    }
    if (!booleanFlag(raw, "network")) {
      if (raw.positionals.length !== 1) throw new UsageError("mvmctl logs takes one sandbox id", { hint: "mvmctl logs ID" });
      const source = stringFlag(raw, "source");
      if (source !== undefined && source !== "agent" && source !== "workload") {
        throw new UsageError(`Invalid value "${source.slice(0, 32)}" for --source: expected agent or workload`);
      }
      const tailRaw = stringFlag(raw, "tail");
      const tail = tailRaw === undefined ? undefined : /^[0-9]{1,5}$/.test(tailRaw) ? Number(tailRaw) : Number.NaN;
      if (tail !== undefined && !(tail >= 1 && tail <= MAX_LOG_LINES)) {
        throw new UsageError(`Invalid value "${String(tailRaw).slice(0, 32)}" for -n: expected 1 to ${MAX_LOG_LINES} lines`);
      }
      return {
        id: sandboxIdArg(raw.positionals[0] ?? ""),
        follow: booleanFlag(raw, "follow"),
        sandbox: { ...(source !== undefined ? { source } : {}), ...(tail !== undefined ? { tail } : {}) },
      };
    }
    if (raw.positionals.length !== 1) throw new UsageError("--network takes one sandbox id", { hint: "mvmctl logs --network ID" });
    return { id: sandboxIdArg(raw.positionals[0] ?? ""), follow: booleanFlag(raw, "follow") };
  },
  async run(ctx, { id, follow, fn, sandbox }) {
    if (fn !== undefined) return printFnLog(ctx, fn);
    if (sandbox !== undefined) {
      return withEngine(ctx, async (engine) => {
        // An interrupt ends a follow as the sandbox's end does: what came so far was printed.
        const stop = new AbortController();
        const restore = follow ? ctx.onInterrupt((signal) => stop.abort(new AbortedError(`Interrupted by ${signal}`))) : () => {};
        const signal = AbortSignal.any([ctx.signal, stop.signal]);
        try {
          return await printSandboxLogs(ctx, engine, id, sandbox, follow, signal);
        } catch (err) {
          if (stop.signal.aborted) return 0;
          throw err;
        } finally {
          restore();
        }
      });
    }
    return withEngine(ctx, async (engine) => {
      let after = 0;
      for (;;) {
        const page = await engine.networkEvents(id, { after, signal: ctx.signal });
        for (const { seq, event } of page.events) {
          if (ctx.global.json) ctx.io.stdout.write(`${JSON.stringify({ seq, event })}\n`);
          else ctx.out.human(`${formatNetworkEvent(event)}\n`);
        }
        after = page.next;
        if (page.events.length > 0) continue;
        if (!follow || ctx.signal.aborted) return 0;
        const info = await engine.getSandbox(id, { signal: ctx.signal }).catch(() => undefined);
        if (info === undefined || info.state === "stopped") return 0;
        await new Promise((resolve) => setTimeout(resolve, FOLLOW_INTERVAL_MS));
      }
    });
  },
});

/** Prints the sandbox's logs; with `follow` then new lines as they come, until the sandbox ends or `signal` fires. */
async function printSandboxLogs(
  ctx: CommandContext,
  engine: EngineApi,
  id: string,
  sandbox: { source?: LogSource; tail?: number },
  follow: boolean,
  signal: AbortSignal,
): Promise<number> {
  let request: { source?: LogSource; tail?: number; after?: string } = sandbox;
  for (;;) {
    const logs = await engine.sandboxLogs(id, { ...request, signal }).catch(async (err: unknown) => {
      // A sandbox that ended between two reads ends the follow; anything else is an error.
      if (request.after !== undefined && !signal.aborted && !(await isRunning(engine, id, signal))) return undefined;
      throw err;
    });
    if (logs === undefined) return 0;
    for (const line of logs.lines) {
      if (ctx.global.json) ctx.io.stdout.write(`${JSON.stringify(line)}\n`);
      else ctx.out.human(`${line.source === "agent" ? "agent" : `${line.stream ?? "out"}[${line.proc ?? 0}]`}: ${printable(line.text, MAX_LOG_LINE_CHARS + 16)}\n`);
    }
    if (logs.truncated) {
      ctx.out.note(
        request.after === undefined
          ? "note: older lines were dropped (the engine keeps the last 1 MiB of output and 256 KiB of agent log)"
          : "note: some lines were dropped before they could be shown (the output came faster than it was followed)",
      );
    }
    if (!follow || signal.aborted) return 0;
    if (logs.next === undefined) {
      ctx.out.note("note: this engine cannot follow logs (its answers carry no cursor)");
      return 0;
    }
    request = { ...(sandbox.source !== undefined ? { source: sandbox.source } : {}), after: logs.next };
    if (logs.lines.length > 0) continue;
    if (!(await isRunning(engine, id, signal))) return 0;
    if (!(await sleep(FOLLOW_INTERVAL_MS, signal))) return 0;
  }
}

/** Whether sandbox `id` still runs (or is paused): false once it stopped or is gone. */
async function isRunning(engine: EngineApi, id: string, signal: AbortSignal): Promise<boolean> {
  const info = await engine.getSandbox(id, { signal }).catch(() => undefined);
  return info !== undefined && info.state !== "stopped";
}

/** Waits `ms`; false when `signal` fired first. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
