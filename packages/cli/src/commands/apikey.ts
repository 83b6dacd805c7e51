/**
 * `mvmctl apikey create|ls|rm`: the API keys `mvmctl serve --e2b` accepts. Only each key's hash is
 * stored; `create` prints the key once.
 */
import { defineCommand } from "../command.js";
import { stringFlag } from "../flags.js";
import { formatTable } from "../text.js";
import type { CommandContext } from "../command.js";

async function stateDirOf(ctx: CommandContext): Promise<string> {
  const { defaultStateDir } = await import("@mvm/engine");
  return ctx.io.env["MVM_STATE_DIR"] || defaultStateDir();
}

export const apikeyCreateCommand = defineCommand<{ name: string }>({
  name: "apikey create",
  summary: "Make an API key for the E2B-compatible server (printed once)",
  usage: "[--name NAME]",
  flags: { name: { type: "string", valueName: "NAME", description: "A note saying whose key it is" } },
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: (raw) => ({ name: stringFlag(raw, "name") ?? "" }),
  async run(ctx, { name }) {
    const { createApiKey } = await import("../e2b/apikeys.js");
    const { key, record } = await createApiKey(await stateDirOf(ctx), name);
    ctx.out.human(`${key}\n`);
    ctx.out.note(`mvmctl apikey: key ${record.id} made; it is not shown again`);
    ctx.out.jsonResult({ key, id: record.id, name: record.name, createdAt: record.createdAt });
    return 0;
  },
});

export const apikeyLsCommand = defineCommand<Record<string, never>>({
  name: "apikey ls",
  summary: "List the E2B server's API keys (ids and names, never keys)",
  usage: "",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: () => ({}),
  async run(ctx) {
    const { listApiKeys } = await import("../e2b/apikeys.js");
    const keys = (await listApiKeys(await stateDirOf(ctx))).map(({ id, name, createdAt }) => ({ id, name, createdAt }));
    ctx.out.human(formatTable(["ID", "NAME", "CREATED"], keys.map((k) => [k.id, k.name || "-", k.createdAt])));
    ctx.out.jsonResult(keys);
    return 0;
  },
});

export const apikeyRmCommand = defineCommand<{ id: string }>({
  name: "apikey rm",
  summary: "Remove an API key of the E2B server",
  usage: "ID",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "none",
  parse: (raw) => ({ id: raw.positionals[0] ?? "" }),
  async run(ctx, { id }) {
    const { removeApiKey } = await import("../e2b/apikeys.js");
    await removeApiKey(await stateDirOf(ctx), id);
    ctx.out.human(`${id}\n`);
    ctx.out.jsonResult({ id });
    return 0;
  },
});
