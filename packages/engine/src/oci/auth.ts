/**
 * Registry authentication: HTTP basic, and the bearer-token flow of the distribution spec (a 401
 * with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, a token fetched from the realm,
 * the request sent again with it).
 *
 * Credentials come from a file only (never from an argument): the docker `config.json` `auths`
 * format, at an explicit path or at `<state>/registry-auth.json`, mode 0600 and owned by the
 * engine's user. Where they may go:
 * - `Authorization: Basic` only to the registry's own origin (the registry client never sends a
 *   request elsewhere: redirects and upload locations are held to its origin);
 * - to a token realm, which must be https, or http on loopback (another origin is allowed, as
 *   token servers usually are); the realm's answer is size-capped and schema-checked.
 * Credentials and tokens are never put in an error message, a log line or an audit record.
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { InvalidArgumentError, parseJsonStrict, TransportError } from "@mvm/protocol";
import { checkOrigin, readBody, send, type HttpOptions, type HttpResponse } from "./http.js";

/** A user name and password (or a registry's access token used as one). */
export interface RegistryCredentials {
  readonly username: string;
  readonly password: string;
}

/** The name of the credentials file in the engine's state directory. */
export const REGISTRY_AUTH_FILE = "registry-auth.json";
/** The environment variable naming another credentials file (docker config.json format). */
export const REGISTRY_AUTH_FILE_ENV = "MVM_REGISTRY_AUTH_FILE";
/** Largest credentials file read, in bytes. */
const MAX_AUTH_FILE_BYTES = 1024 * 1024;
/** Largest `WWW-Authenticate` header parsed, in characters. */
const MAX_CHALLENGE_CHARS = 4096;
/** Largest token answer read, in bytes. */
const MAX_TOKEN_ANSWER_BYTES = 64 * 1024;
/** Longest token accepted, in characters. */
const MAX_TOKEN_CHARS = 16 * 1024;

const AuthEntry = z.object({
  auth: z.string().max(8192).optional(),
  username: z.string().max(1024).optional(),
  password: z.string().max(8192).optional(),
});
/** docker's config.json: only `auths` is read; other top-level fields (credsStore…) are ignored. */
const AuthFile = z.object({ auths: z.record(z.string().max(512), AuthEntry).optional() });

/**
 * The credentials for registry `host` (`name[:port]`) from the credentials file: the path in
 * `env.MVM_REGISTRY_AUTH_FILE`, else `<stateDir>/registry-auth.json`; undefined when there is no
 * file or no entry for the host. Keys may be `host`, `host:port` or a URL naming it.
 * @throws InvalidArgumentError when the file is not a regular file, is readable by others than
 *   its owner, is not owned by this user, or is malformed (its content never quoted).
 */
export async function loadRegistryCredentials(host: string, options: { stateDir: string; env?: NodeJS.ProcessEnv }): Promise<RegistryCredentials | undefined> {
  const explicit = (options.env ?? process.env)[REGISTRY_AUTH_FILE_ENV];
  const path = explicit !== undefined && explicit !== "" ? explicit : join(options.stateDir, REGISTRY_AUTH_FILE);
  const text = await readPrivateFile(path);
  if (text === undefined) return undefined;
  let parsed: z.infer<typeof AuthFile>;
  try {
    parsed = AuthFile.parse(parseJsonStrict(text, { maxDepth: 8 }));
  } catch {
    throw new InvalidArgumentError(`Registry credentials file "${path}" is malformed: expected {"auths": {"HOST": {"auth": "base64(user:password)"}}}`);
  }
  const wanted = host.toLowerCase();
  for (const [key, entry] of Object.entries(parsed.auths ?? {})) {
    if (hostOfKey(key) !== wanted) continue;
    if (entry.username !== undefined && entry.password !== undefined) return { username: entry.username, password: entry.password };
    if (entry.auth !== undefined) {
      const decoded = /^[A-Za-z0-9+/]*={0,2}$/.test(entry.auth) ? Buffer.from(entry.auth, "base64").toString("utf8") : "";
      const colon = decoded.indexOf(":");
      if (colon <= 0) throw new InvalidArgumentError(`Registry credentials file "${path}": the entry for "${host}" has an "auth" that is not base64 of user:password`);
      return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
  }
  return undefined;
}

/** `host[:port]` of an `auths` key: a bare host, or a URL such as `https://host/v1/`. */
function hostOfKey(key: string): string {
  const bare = key.replace(/^[a-z]+:\/\//i, "");
  return (bare.split("/")[0] ?? "").toLowerCase();
}

/** A small file the engine's user owns and nobody else may read or write; undefined when absent. */
async function readPrivateFile(path: string): Promise<string | undefined> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new InvalidArgumentError(`Cannot read registry credentials file "${path}": ${(err as NodeJS.ErrnoException).code ?? "error"}`, { hint: "it must be a regular file (not a symlink), mode 0600" });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`Registry credentials file "${path}" is not a regular file`);
    if ((st.mode & 0o077) !== 0) throw new InvalidArgumentError(`Registry credentials file "${path}" is accessible to others (mode ${(st.mode & 0o777).toString(8)})`, { hint: `chmod 600 ${path}` });
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) throw new InvalidArgumentError(`Registry credentials file "${path}" is owned by uid ${st.uid}, not by the engine's user (${uid})`);
    if (st.size > MAX_AUTH_FILE_BYTES) throw new InvalidArgumentError(`Registry credentials file "${path}" is over ${MAX_AUTH_FILE_BYTES} bytes`);
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await handle.read(buf, 0, st.size, 0);
    return buf.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}

/** One challenge of a `WWW-Authenticate` header. */
export interface AuthChallenge {
  readonly scheme: "basic" | "bearer";
  readonly params: Readonly<Record<string, string>>;
}

const TOKEN68 = /^[A-Za-z][A-Za-z0-9-]*$/;

/**
 * Parses a `WWW-Authenticate` value holding one challenge (`Scheme k="v", k=v, …`). Only Basic
 * and Bearer are understood; anything else, a repeated or malformed parameter, or a header over
 * 4096 characters gives undefined.
 */
export function parseChallenge(header: string): AuthChallenge | undefined {
  if (header.length > MAX_CHALLENGE_CHARS) return undefined;
  const m = /^\s*([A-Za-z]+)(?:\s+(.*))?$/s.exec(header);
  if (!m) return undefined;
  const scheme = m[1]!.toLowerCase();
  if (scheme !== "basic" && scheme !== "bearer") return undefined;
  const params: Record<string, string> = Object.create(null) as Record<string, string>;
  let rest = (m[2] ?? "").trim();
  while (rest !== "") {
    const pm = /^([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,\s*|$)/s.exec(rest);
    if (!pm || !TOKEN68.test(pm[1]!)) return undefined;
    const key = pm[1]!.toLowerCase();
    if (key in params) return undefined;
    params[key] = pm[2] !== undefined ? pm[2].replace(/\\(.)/g, "$1") : pm[3]!;
    rest = rest.slice(pm[0].length);
  }
  return { scheme, params };
}

const TokenAnswer = z.object({
  token: z.string().min(1).max(MAX_TOKEN_CHARS).regex(/^[\x21-\x7e]+$/).optional(),
  access_token: z.string().min(1).max(MAX_TOKEN_CHARS).regex(/^[\x21-\x7e]+$/).optional(),
});

/**
 * The authorization a registry client adds to its requests: none until a 401 says what the
 * registry wants, then Basic (with credentials) or a bearer token per scope, kept for the
 * client's lifetime (one push or pull).
 */
export class RegistryAuth {
  readonly #origin: string;
  readonly #credentials: RegistryCredentials | undefined;
  readonly #http: HttpOptions;
  /** The header that last worked, sent first on the next request. */
  #current: string | undefined;
  readonly #tokens = new Map<string, string>();

  constructor(origin: string, credentials: RegistryCredentials | undefined, http: HttpOptions) {
    this.#origin = origin;
    this.#credentials = credentials;
    this.#http = http;
  }

  /** The Authorization header for a request to `url` (on the registry's origin), if any yet. */
  header(url: string): string | undefined {
    return new URL(url).origin === this.#origin ? this.#current : undefined;
  }

  /**
   * Answers a 401 for a request to `url`: the Authorization header to send it again with, or
   * undefined when there is nothing to try (then the 401 stands).
   * @throws TransportError when the token server fails or answers out of bounds
   */
  async challenge(res: HttpResponse, url: string, tried: string | undefined): Promise<string | undefined> {
    if (new URL(url).origin !== this.#origin) return undefined;
    const raw = res.headers["www-authenticate"];
    const values = Array.isArray(raw) ? raw : raw === undefined ? [] : [raw];
    const challenges = values.map(parseChallenge).filter((c): c is AuthChallenge => c !== undefined);
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer !== undefined) {
      const realm = bearer.params["realm"];
      if (realm === undefined) return undefined;
      const service = bearer.params["service"];
      const scope = bearer.params["scope"];
      const key = `${realm}\n${service ?? ""}\n${scope ?? ""}`;
      let token = this.#tokens.get(key);
      if (token === undefined || `Bearer ${token}` === tried) {
        token = await this.#fetchToken(realm, service, scope);
        this.#tokens.set(key, token);
      }
      const value = `Bearer ${token}`;
      if (value === tried) return undefined;
      this.#current = value;
      return value;
    }
    if (challenges.some((c) => c.scheme === "basic") && this.#credentials !== undefined) {
      const value = `Basic ${basic(this.#credentials)}`;
      if (value === tried) return undefined;
      this.#current = value;
      return value;
    }
    return undefined;
  }

  /** GET realm?service=…&scope=…, with the credentials as Basic when there are any. */
  async #fetchToken(realm: string, service: string | undefined, scope: string | undefined): Promise<string> {
    let url: URL;
    try {
      checkOrigin(realm, true);
      url = new URL(realm);
    } catch (err) {
      throw new TransportError(`Registry ${this.#origin} names a token realm that is refused: ${(err as Error).message}`, { cause: err, hint: "a token realm must be https, or http on a loopback host" });
    }
    if (service !== undefined) url.searchParams.set("service", service);
    if (scope !== undefined) for (const s of scope.split(" ").filter((x) => x !== "")) url.searchParams.append("scope", s);
    const what = `GET token from ${url.origin}${url.pathname}`;
    const headers: Record<string, string> = { accept: "application/json" };
    if (this.#credentials !== undefined) headers["authorization"] = `Basic ${basic(this.#credentials)}`;
    const res = await send({ ...this.#http, method: "GET", url: url.toString(), headers });
    if (res.status !== 200) {
      res.discard();
      throw new TransportError(`${what}: HTTP ${res.status}`, res.status === 401 || res.status === 403 ? { hint: "check the registry credentials file" } : {});
    }
    const body = await readBody(res, MAX_TOKEN_ANSWER_BYTES, what);
    let answer: z.infer<typeof TokenAnswer>;
    try {
      answer = TokenAnswer.parse(parseJsonStrict(body.toString("utf8"), { maxDepth: 8 }));
    } catch {
      throw new TransportError(`${what}: the answer is not a token`);
    }
    const token = answer.token ?? answer.access_token;
    if (token === undefined) throw new TransportError(`${what}: the answer has no token`);
    return token;
  }
}

function basic(c: RegistryCredentials): string {
  return Buffer.from(`${c.username}:${c.password}`, "utf8").toString("base64");
}
