/**
 * The unprivileged account `debian:` builds run as: a system user (default `mvm-build`) with a
 * subordinate uid and gid range of at least 65 536 ids, so mmdebstrap's `--mode=unshare` can map
 * a whole Debian userland (root included) onto ids that are nobody on the host.
 * `scripts/setup.sh` creates both, idempotently.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { AdmissionError } from "@mvm/protocol";
import { quote } from "./ref.js";

/** The account builds run as unless the store is told otherwise. */
export const DEFAULT_BUILD_USER = "mvm-build";
/** Fewest subordinate ids a build user needs: uid 0–65535 inside the build. */
export const MIN_SUBORDINATE_IDS = 65_536;

export interface BuildUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  /** First host id of the subordinate uid range, and its length. */
  readonly subuid: { readonly start: number; readonly count: number };
  readonly subgid: { readonly start: number; readonly count: number };
}

const SETUP_HINT = "run scripts/setup.sh as root: it creates the build user and its subuid/subgid ranges";

/** Finds `name:start:count` (or `uid:start:count`) with at least `MIN_SUBORDINATE_IDS` ids. */
function subordinateRange(text: string, name: string, uid: number): { start: number; count: number } | undefined {
  for (const line of text.split("\n")) {
    const [who, start, count] = line.trim().split(":");
    if (who !== name && who !== String(uid)) continue;
    if (!/^[0-9]{1,10}$/.test(start ?? "") || !/^[0-9]{1,10}$/.test(count ?? "")) continue;
    const range = { start: Number(start), count: Number(count) };
    if (range.start > 0 && range.count >= MIN_SUBORDINATE_IDS) return range;
  }
  return undefined;
}

/**
 * Looks up the build user in `etcDir`'s passwd, subuid and subgid files.
 * @throws AdmissionError (hint: run scripts/setup.sh) when the user is missing, is root, or lacks
 *   a subuid or subgid range of at least 65 536 ids.
 */
export async function findBuildUser(name = DEFAULT_BUILD_USER, etcDir = "/etc"): Promise<BuildUser> {
  const read = (file: string): Promise<string> => readFile(join(etcDir, file), "utf8").catch(() => "");
  const [passwd, subuidText, subgidText] = await Promise.all([read("passwd"), read("subuid"), read("subgid")]);
  const entry = passwd
    .split("\n")
    .map((line) => line.split(":"))
    .find((fields) => fields[0] === name);
  if (entry === undefined || !/^[0-9]+$/.test(entry[2] ?? "") || !/^[0-9]+$/.test(entry[3] ?? "")) {
    throw new AdmissionError(`Cannot build Debian images: build user ${quote(name)} does not exist`, { hint: SETUP_HINT });
  }
  const uid = Number(entry[2]);
  const gid = Number(entry[3]);
  if (uid === 0 || gid === 0) {
    throw new AdmissionError(`Cannot build Debian images: build user ${quote(name)} has uid or gid 0; builds never run as root`, { hint: SETUP_HINT });
  }
  const subuid = subordinateRange(subuidText, name, uid);
  const subgid = subordinateRange(subgidText, name, uid);
  if (subuid === undefined || subgid === undefined) {
    const which = subuid === undefined ? `${join(etcDir, "subuid")}` : `${join(etcDir, "subgid")}`;
    throw new AdmissionError(
      `Cannot build Debian images: build user ${quote(name)} has no range of ${MIN_SUBORDINATE_IDS} ids in ${quote(which)}`,
      { hint: SETUP_HINT },
    );
  }
  return { name, uid, gid, subuid, subgid };
}
