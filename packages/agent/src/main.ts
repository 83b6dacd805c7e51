/**
 * Entry point of the guest agent: `node agent.cjs --channel stdio|<device path>`.
 *
 * Order matters for startup latency: the hello goes out before the protocol schemas are
 * imported, so the host's half of the handshake overlaps with loading them.
 */
import { READY_LINE, USAGE, awaitStartLine, openChannel, parseArgs, type Channel } from "./channel.js";
import { helloFrame } from "./hello.js";
import { closeInheritedFds, routeConsoleToStderr } from "./hygiene.js";
// Static on purpose: the bundler tree-shakes a static import down to the relay codec (a few KiB,
// no schemas), while a dynamic one would pull all of @mvm/protocol and zod into the prelude.
import { startRelay, type Relay } from "./relay.js";
import type { QuiesceHooks } from "./session.js";

interface Ender {
  end(code: number, reason: string, err?: unknown): void;
}

let session: Ender | undefined;

function fail(code: number, reason: string, err?: unknown): void {
  if (session) {
    session.end(code, reason, err);
    return;
  }
  const detail = err instanceof Error ? `: ${err.message}` : "";
  process.stderr.write(`mvm-agent: ${reason}${detail}\n`);
  process.exit(code);
}

routeConsoleToStderr();
process.on("uncaughtException", (err) => fail(2, "uncaught exception", err));
process.on("unhandledRejection", (err) => fail(2, "unhandled rejection", err));
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  process.on(signal, () => fail(0, `received ${signal}`));
}

/** The egress relay once started (undefined when not asked for, or when it could not start). */
let relay: Promise<Relay | undefined> = Promise.resolve(undefined);
let liveRelay: Relay | undefined;

/** Starts the egress relay if asked to; its failure is reported and the agent carries on. */
function startRelayIfAsked(channelPath: string | undefined): void {
  if (channelPath === undefined) return;
  const report = (what: string) => (err: unknown): undefined => {
    const detail = err instanceof Error ? err.message : String(err);
    process.stderr.write(`mvm-agent: ${what}: ${detail}\n`);
    return undefined;
  };
  relay = startRelay({ channelPath, onError: report("the egress relay failed") }).then((r) => (liveRelay = r), report("cannot start the egress relay"));
}

/** How a quiesce reaches the relay: it pauses with the session and starts over with a new host. */
const relayHooks: QuiesceHooks = {
  quiesce: async () => {
    await (await relay)?.pause();
  },
  resume: () => liveRelay?.resume(),
  restart: () => liveRelay?.reset(),
};

let channel: Channel | undefined;
let awaitStart = false;
let relayPath: string | undefined;
try {
  const args = parseArgs(process.argv.slice(2));
  awaitStart = args.awaitStart;
  relayPath = args.relay;
  closeInheritedFds();
  channel = openChannel(args.channel);
} catch (err) {
  fail(2, `cannot start (${USAGE})`, err);
}
if (channel && !awaitStart) {
  const open = channel;
  open.output.write(helloFrame());
  // No top-level await: the bundle is CommonJS.
  void import("./session.js").then(
    ({ Session }) => {
      const s = new Session(open, relayHooks);
      session = s;
      s.start();
      startRelayIfAsked(relayPath);
    },
    (err: unknown) => fail(2, "cannot load the session", err),
  );
} else if (channel) {
  // Load first, then wait: the host may save the VM at this point and start it many times.
  const open = channel;
  void import("./session.js")
    .then(async ({ Session }) => {
      open.output.write(READY_LINE);
      await awaitStartLine(open.input);
      open.output.write(helloFrame());
      const s = new Session(open, relayHooks);
      session = s;
      s.start();
      // awaitStartLine left the input paused; a new "data" listener does not undo an explicit pause.
      open.input.resume();
      startRelayIfAsked(relayPath);
    })
    .catch((err: unknown) => fail(2, "cannot start the session", err));
}
