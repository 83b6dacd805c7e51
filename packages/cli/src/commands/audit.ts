/**
 * `mvmctl audit verify|tail|show|pubkey`: the state directory's audit log, read offline (no
 * engine, no daemon). The log is `<state>/audit/audit.log`; the host key `<state>/keys/host-ed25519.pem`.
 */
import type { KeyObject } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { NotFoundError } from "@mvm/protocol";
import type { AuditEntry, StoredEntry } from "@mvm/engine";
import { defineCommand, type FlagSpec, type RawArgs } from "../command.js";
import { ExitCode } from "../exit-code.js";
import { booleanFlag, integerFlag, stringFlag } from "../flags.js";
import { printable } from "../text.js";
import { UsageError } from "../usage-error.js";

const LOCATION_FLAGS = {
  file: { type: "string", valueName: "PATH", description: "Audit file (default: <state>/audit/audit.log)" },
  "state-dir": { type: "string", valueName: "DIR", description: "State directory (default: $MVM_STATE_DIR or the engine's default)" },
} as const satisfies Record<string, FlagSpec>;

/** The flags naming the files; resolved in `run` so the engine module loads only for audit commands. */
interface Location {
  stateDir: string | undefined;
  file: string | undefined;
}

interface Resolved {
  stateDir: string;
  file: string;
}

/** The engine module, loaded on first use: mvmctl's other commands do not pay for it. */
const engineModule = () => import("@mvm/engine");

function location(raw: RawArgs): Location {
  return { stateDir: stringFlag(raw, "state-dir"), file: stringFlag(raw, "file") };
}

async function resolve(loc: Location): Promise<Resolved> {
  const { auditFilePath, defaultStateDir } = await engineModule();
  const stateDir = loc.stateDir ?? defaultStateDir();
  return { stateDir, file: loc.file ?? auditFilePath(stateDir) };
}

async function ensureFile(path: string): Promise<void> {
  try {
    await stat(path);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") {
      throw new NotFoundError(`Audit file "${path}" does not exist`, { cause, hint: "Pass --file PATH or --state-dir DIR" });
    }
    throw cause;
  }
}

async function publicKeyFor(loc: Resolved, pubkeyFile: string | undefined): Promise<KeyObject> {
  const { hostKeyPath, loadHostKey, parsePublicKey } = await engineModule();
  if (pubkeyFile !== undefined) {
    let text: string;
    try {
      text = await readFile(pubkeyFile, "utf8");
    } catch (cause) {
      throw new NotFoundError(`Cannot read public key file "${pubkeyFile}"`, { cause });
    }
    return parsePublicKey(text, `public key file "${pubkeyFile}"`);
  }
  const path = hostKeyPath(loc.stateDir);
  try {
    return (await loadHostKey(path)).publicKey;
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") {
      throw new NotFoundError(`No host audit key at "${path}"`, { cause, hint: "Pass --pubkey FILE with the public key the log was signed with" });
    }
    throw cause;
  }
}

function formatEntry(entry: AuditEntry): string {
  const { type, ...fields } = entry.event;
  const detail = Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  return `${entry.seq}\t${entry.ts}\t${type}\t${printable(detail, 1024)}\n`;
}

function formatStored(stored: StoredEntry): string {
  return stored.entry !== null ? formatEntry(stored.entry) : `?\tline ${stored.line}\tunreadable: ${printable(stored.problem ?? "", 256)}\n`;
}

export const auditVerifyCommand = defineCommand<Location & { pubkey: string | undefined; allSignatures: boolean; expectLastSeq: number | undefined }>({
  name: "audit verify",
  summary: "Check the whole audit chain offline; exit 1 naming the first bad entry",
  usage: "[--pubkey FILE] [--file PATH] [--all-signatures] [--expect-last-seq N]",
  details:
    "Without --pubkey the public half of this host's key is used. By default every link of the chain and the last\n" +
    "signature are checked (the chain fixes every earlier byte); --all-signatures checks each entry's signature.\n" +
    "A log cut back at a line boundary still verifies: keep the last seq somewhere else and pass it as\n" +
    "--expect-last-seq to detect that (code \"truncated\").\n" +
    "With --json the result is printed: {ok, entries, lastSeq} or {ok: false, firstBad: {seq, line, offset, code, reason}}.",
  flags: {
    ...LOCATION_FLAGS,
    pubkey: { type: "string", valueName: "FILE", description: "Ed25519 public key (PEM, or raw key in hex or base64)" },
    "all-signatures": { type: "boolean", description: "Verify every entry's signature (slower)" },
    "expect-last-seq": { type: "string", valueName: "N", description: "Fail unless the log reaches at least entry N (detects a cut tail)" },
  },
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: (raw) => ({
    ...location(raw),
    pubkey: stringFlag(raw, "pubkey"),
    allSignatures: booleanFlag(raw, "all-signatures"),
    expectLastSeq: integerFlag(raw, "expect-last-seq"),
  }),
  async run(ctx, flags) {
    const options = { ...flags, ...(await resolve(flags)) };
    const key = await publicKeyFor(options, options.pubkey);
    await ensureFile(options.file);
    const { verifyAuditFile } = await engineModule();
    const result = await verifyAuditFile(options.file, key, {
      signatures: options.allSignatures ? "all" : "tail",
      signal: ctx.signal,
      ...(options.expectLastSeq !== undefined ? { expectLastSeq: options.expectLastSeq } : {}),
    });
    ctx.out.jsonResult({ file: options.file, ...result });
    if (result.ok) {
      ctx.out.human(`ok: ${result.entries} entries, chain and signatures verified (last seq ${result.lastSeq})\n`);
      return ExitCode.Ok;
    }
    const bad = result.firstBad;
    const what = bad.seq === null ? `line ${bad.line}` : `entry ${bad.seq} (line ${bad.line})`;
    ctx.out.human(`BAD: ${what} at byte ${bad.offset}: ${bad.code}: ${printable(bad.reason, 1024)}\n`);
    ctx.out.note(`error: audit log "${options.file}" fails verification at ${what}`);
    return ExitCode.Error;
  },
});

export const auditTailCommand = defineCommand<Location & { count: number }>({
  name: "audit tail",
  summary: "Print the last audit entries",
  usage: "[-n N] [--file PATH]",
  details: "Entries are not verified here: use `mvmctl audit verify`. With --json the entries are printed as an array.",
  flags: { ...LOCATION_FLAGS, lines: { type: "string", short: "n", valueName: "N", description: "How many entries (default 20, at most 10000)" } },
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: (raw) => {
    const count = integerFlag(raw, "lines") ?? 20;
    if (count < 1 || count > 10_000) throw new UsageError(`Invalid value "${count}" for -n: expected 1 to 10000`);
    return { ...location(raw), count };
  },
  async run(ctx, flags) {
    const options = { ...flags, ...(await resolve(flags)) };
    await ensureFile(options.file);
    const { tailAuditEntries } = await engineModule();
    const entries = await tailAuditEntries(options.file, options.count, ctx.signal);
    ctx.out.jsonResult(entries);
    ctx.out.human(entries.map(formatStored).join(""));
    return ExitCode.Ok;
  },
});

export const auditShowCommand = defineCommand<Location & { seq: number; hashPrefix: string | undefined }>({
  name: "audit show",
  summary: "Print one audit entry in full",
  usage: "[--file PATH] SEQ|AUDIT-ENTRY-ID",
  details:
    "AUDIT-ENTRY-ID is what receipts carry (aud_<seq>_<first 16 hex of the entry hash>); the entry\n" +
    "found must also have that hash. With --json the stored entry is printed.",
  flags: { ...LOCATION_FLAGS },
  positionals: { min: 1, max: 1 },
  connection: "none",
  parse: (raw) => {
    const text = raw.positionals[0] ?? "";
    const id = /^aud_([1-9][0-9]{0,14})_([0-9a-f]{16})$/.exec(text);
    if (id) return { ...location(raw), seq: Number(id[1]), hashPrefix: id[2] };
    if (!/^[1-9][0-9]{0,14}$/.test(text)) {
      throw new UsageError(`Invalid entry "${text}": expected a whole number from 1 or an audit entry id (aud_<seq>_<16 hex>)`);
    }
    return { ...location(raw), seq: Number(text), hashPrefix: undefined };
  },
  async run(ctx, flags) {
    const options = { ...flags, ...(await resolve(flags)) };
    await ensureFile(options.file);
    const { findAuditEntry } = await engineModule();
    const stored = await findAuditEntry(options.file, options.seq, ctx.signal);
    if (stored === undefined || stored.entry === null) {
      throw new NotFoundError(`No audit entry ${options.seq} in "${options.file}"`, { hint: "Run `mvmctl audit tail` to see the latest entries" });
    }
    if (options.hashPrefix !== undefined && !stored.entry.hash.startsWith(options.hashPrefix)) {
      throw new NotFoundError(`Audit entry ${options.seq} in "${options.file}" has hash ${stored.entry.hash.slice(0, 16)}…, not ${options.hashPrefix}…`, {
        hint: "The receipt names an entry of another log, or the log was rewritten: run `mvmctl audit verify`",
      });
    }
    ctx.out.jsonResult(stored);
    ctx.out.human(`${JSON.stringify(stored.entry, null, 2)}\n`);
    return ExitCode.Ok;
  },
});

export const auditPubkeyCommand = defineCommand<Location>({
  name: "audit pubkey",
  summary: "Print this host's audit public key (PEM), for `audit verify --pubkey`",
  usage: "",
  details: 'With --json {"pem": ...} is printed.',
  flags: { "state-dir": LOCATION_FLAGS["state-dir"] },
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: (raw) => location(raw),
  async run(ctx, flags) {
    const { publicKeyPem } = await engineModule();
    const pem = publicKeyPem(await publicKeyFor(await resolve(flags), undefined));
    ctx.out.jsonResult({ pem });
    ctx.out.human(pem);
    return ExitCode.Ok;
  },
});
