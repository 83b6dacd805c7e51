// The agent's relay for bench/egress.mjs, in a child process as inside a sandbox: it connects to
// the relay socket given as argv[2], listens for proxy connections on a free loopback port and
// reports that port over the IPC channel. Ends when the bench disconnects.
import { startRelay } from "../packages/agent/dist/relay.js";

const relay = await startRelay({ channelPath: process.argv[2], listenPort: 0 });
process.send({ port: relay.port });
process.on("disconnect", () => void relay.close().then(() => process.exit(0)));
