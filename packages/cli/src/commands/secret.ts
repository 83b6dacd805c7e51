/**
 * `mvmctl secret set|ls|rm`: the secret store on the engine's host. Values are read from stdin
 * (or a host environment variable / file), never from the command line, and never printed.
 */
import { readFile } from "node:fs/promises";
import { MAX_SECRET_VALUE_BYTES, SECRET_NAME_PATTERN, type SecretMeta } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { listFlag, stringFlag } from "../flags.js";
import { formatTable } from "../text.js";
import { UsageError } from "../usage-error.js";
import type { InStream } from "../io.js";
import { withEngine } from "./_lifetime.js";

function secretNameArg(value: string): string {
  if (!SECRET_NAME_PATTERN.test(value)) {
    throw new UsageError(`Invalid secret name "${value.slice(0, 140)}"`, {
      hint: "A secret name is 1 to 128 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
    });
  }
  return value;
}

async function readBounded(stdin: InStream): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of stdin) {
    const b = typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk);
    total += b.byteLength;
    if (total > MAX_SECRET_VALUE_BYTES + 1) throw new UsageError(`The secret on stdin is longer than ${MAX_SECRET_VALUE_BYTES} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString("utf8");
}

interface SetOptions {
  name: string;
  hosts: string[];
  fromEnv: string | undefined;
  fromFile: string | undefined;
}

export const secretSetCommand = defineCommand<SetOptions>({
  name: "secret set",
  summary: "Store a secret on the engine's host (value from stdin)",
  usage: "NAME --host HOST [--host HOST...] [--from-env VAR | --from-file PATH] < value",
  details:
    "The value is read from stdin (one trailing newline is dropped), or from --from-env / --from-file.\n" +
    "It is stored 0600 in the engine's state directory. --host binds it: a mediated secret is only\n" +
    "ever sent to those hosts (patterns like api.example.com or *.example.com), over TLS.",
  flags: {
    host: { type: "string", multiple: true, valueName: "HOST", description: "Host the secret may be sent to (repeatable)" },
    "from-env": { type: "string", valueName: "VAR", description: "Read the value from this environment variable of mvmctl" },
    "from-file": { type: "string", valueName: "PATH", description: "Read the value from this file" },
  },
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => {
    const fromEnv = stringFlag(raw, "from-env");
    const fromFile = stringFlag(raw, "from-file");
    if (fromEnv !== undefined && fromFile !== undefined) throw new UsageError("Give at most one of --from-env and --from-file");
    return { name: secretNameArg(raw.positionals[0] ?? ""), hosts: [...listFlag(raw, "host")], fromEnv, fromFile };
  },
  async run(ctx, options) {
    let value: string;
    if (options.fromEnv !== undefined) {
      const v = ctx.io.env[options.fromEnv];
      if (v === undefined) throw new UsageError(`The environment variable "${options.fromEnv}" is not set`);
      value = v;
    } else if (options.fromFile !== undefined) {
      value = (await readFile(options.fromFile)).subarray(0, MAX_SECRET_VALUE_BYTES + 1).toString("utf8");
    } else {
      if (ctx.io.stdin.isTTY) {
        throw new UsageError("The secret's value is read from stdin, which is a terminal", {
          hint: "pipe it in (e.g. `mvmctl secret set NAME --host HOST < file`) or use --from-env / --from-file",
        });
      }
      value = await readBounded(ctx.io.stdin);
    }
    return withEngine(ctx, async (engine) => {
      const meta = await engine.setSecret(options.name, value, { signal: ctx.signal, ...(options.hosts.length > 0 ? { hosts: options.hosts } : {}) });
      ctx.out.human(`${meta.name} (${meta.bytes} bytes; hosts: ${meta.hosts.length > 0 ? meta.hosts.join(", ") : "none"})\n`);
      ctx.out.jsonResult(meta);
      return 0;
    });
  },
});

export const secretLsCommand = defineCommand<Record<string, never>>({
  name: "secret ls",
  summary: "List stored secrets (names and hosts, never values)",
  usage: "",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "auto",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const secrets: SecretMeta[] = await engine.listSecrets({ signal: ctx.signal });
      ctx.out.human(
        formatTable(
          ["NAME", "BYTES", "HOSTS", "UPDATED"],
          secrets.map((s) => [s.name, String(s.bytes), s.hosts.join(",") || "-", s.updatedAt]),
        ),
      );
      ctx.out.jsonResult(secrets);
      return 0;
    });
  },
});

export const secretRmCommand = defineCommand<{ name: string }>({
  name: "secret rm",
  summary: "Delete a stored secret",
  usage: "NAME",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => ({ name: secretNameArg(raw.positionals[0] ?? "") }),
  async run(ctx, { name }) {
    return withEngine(ctx, async (engine) => {
      await engine.removeSecret(name, { signal: ctx.signal });
      ctx.out.human(`${name}\n`);
      ctx.out.jsonResult({ name, removed: true });
      return 0;
    });
  },
});
