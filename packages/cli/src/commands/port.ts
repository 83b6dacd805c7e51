/**
 * `mvmctl port ID PORT [--publish] [--host-port N]`: where a sandbox's guest port is reached on
 * this host (`127.0.0.1:HOSTPORT`); with --publish, publishes it first when it is not yet.
 */
import { NotFoundError } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { booleanFlag, sandboxIdArg, stringFlag } from "../flags.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

function portArg(raw: string, what: string): number {
  const n = /^[0-9]{1,5}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(n >= 1 && n <= 65535)) throw new UsageError(`Invalid ${what} "${raw.slice(0, 32)}": expected a port number from 1 to 65535`);
  return n;
}

export const portCommand = defineCommand<{ id: string; port: number; publish: boolean; hostPort: number | undefined }>({
  name: "port",
  summary: "Show (or publish) where a sandbox's port is reached on this host",
  usage: "[--publish [--host-port N]] ID PORT",
  details:
    "Prints 127.0.0.1:HOSTPORT for the guest PORT published at create (--publish on create or run) or later with " +
    "--publish here (a loopback port the kernel picks, or --host-port). A sandbox publishes at most 16 ports. " +
    "With --json {guest, host, address} is printed.",
  flags: {
    publish: { type: "boolean", description: "Publish the port when it is not published yet" },
    "host-port": { type: "string", valueName: "N", description: "Host loopback port to publish on (with --publish)" },
  },
  positionals: { min: 2, max: 2 },
  connection: "daemon",
  parse(raw) {
    const hostRaw = stringFlag(raw, "host-port");
    const publish = booleanFlag(raw, "publish");
    if (hostRaw !== undefined && !publish) throw new UsageError('Option "--host-port" needs "--publish"');
    return {
      id: sandboxIdArg(raw.positionals[0] ?? ""),
      port: portArg(raw.positionals[1] ?? "", "port"),
      publish,
      hostPort: hostRaw === undefined ? undefined : portArg(hostRaw, "value for --host-port"),
    };
  },
  async run(ctx, { id, port, publish, hostPort }) {
    return withEngine(ctx, async (engine) => {
      const info = publish
        ? await engine.publishPort(id, hostPort === undefined ? { guest: port } : { guest: port, host: hostPort }, { signal: ctx.signal })
        : await engine.getSandbox(id, { signal: ctx.signal });
      const found = info.ports?.find((p) => p.guest === port);
      if (found === undefined) {
        throw new NotFoundError(`Port ${port} of sandbox "${id}" is not published`, { hint: `Publish it: mvmctl port --publish ${id} ${port}` });
      }
      const address = `127.0.0.1:${found.host}`;
      ctx.out.human(`${address}\n`);
      ctx.out.jsonResult({ guest: port, host: found.host, address });
      return 0;
    });
  },
});
