/**
 * Bundle locations, parsed strictly. A location is one of:
 *
 * ```
 * file:///absolute/dir                 push and pull (a static layout on this host)
 * https://host[:port]/path             pull only (a static layout served over https)
 * oci://host[:port]/repository[:tag]   push and pull (an OCI registry, https)
 * oci+http://host:port/repository      the same over plain http: loopback hosts only
 * ```
 *
 * A pull source ends in `@sha256:<64 hex>`, the bundle digest; a push destination does not.
 * Refused everywhere: a query (`?`), a fragment (`#`), userinfo, percent-encoding (`%`; nothing
 * is decoded), `.` and `..` segments, empty segments, characters outside `[A-Za-z0-9._~/-]` in a
 * path, and more than {@link MAX_URI_CHARS} characters. A static layout is
 * `<dir>/blobs/sha256/<hex>` for bundle.json, the index and every pack alike.
 */
import { InvalidArgumentError, type Sha256Digest } from "@mvm/protocol";
import { isLoopbackHost } from "../oci/http.js";
import { checkRepository } from "../oci/registry.js";

/** Longest location accepted. */
export const MAX_URI_CHARS = 2048;

export type BundleLocation =
  | { readonly kind: "file"; readonly dir: string }
  | { readonly kind: "https"; readonly base: string }
  | { readonly kind: "oci"; readonly origin: string; readonly repository: string; readonly tag?: string };

/** A pull source: where, and the bundle digest it is pinned to. */
export interface BundleSource {
  readonly location: BundleLocation;
  readonly digest: Sha256Digest;
}

const SEGMENT = /^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$/;
const HOST = /^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
const IPV6 = /^\[[0-9a-f:.]{2,45}\]$/;
const PORT = /^[1-9][0-9]{0,4}$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST_SUFFIX = /@(sha256:[0-9a-f]{64})$/;

function bad(uri: string, why: string, hint?: string): InvalidArgumentError {
  const shown = JSON.stringify(uri.length > 200 ? `${uri.slice(0, 200)}…` : uri);
  return new InvalidArgumentError(`Invalid bundle location ${shown}: ${why}`, hint === undefined ? {} : { hint });
}

/** Checks a `/`-separated absolute path of safe segments; returns it without a trailing slash. */
function checkPath(uri: string, path: string, allowRoot: boolean): string {
  if (!path.startsWith("/")) throw bad(uri, "the path must be absolute");
  const trimmed = path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path;
  if (trimmed === "/") {
    if (!allowRoot) throw bad(uri, "the path must name a directory below /");
    return "";
  }
  for (const segment of trimmed.slice(1).split("/")) {
    if (segment === "") throw bad(uri, "empty path segment");
    if (segment === "." || segment === "..") throw bad(uri, `"${segment}" segment`);
    if (!SEGMENT.test(segment)) throw bad(uri, "path characters must be letters, digits, \".\", \"_\", \"~\" and \"-\"");
  }
  return trimmed;
}

/** Splits `host[:port]` and checks both. */
function checkAuthority(uri: string, authority: string): { host: string; port: string | undefined } {
  if (authority.includes("@")) throw bad(uri, "userinfo is not allowed");
  const m = /^(\[[^\]]*\]|[^:]*)(?::([^:]*))?$/.exec(authority);
  if (m === null) throw bad(uri, "malformed host");
  const host = m[1] ?? "";
  const port = m[2];
  if (!(HOST.test(host) || IPV6.test(host)) || host.length > 253) throw bad(uri, "malformed host (lowercase DNS name or IP address)");
  if (port !== undefined && (!PORT.test(port) || Number(port) > 65535)) throw bad(uri, "malformed port");
  return { host, port };
}

function parseLocation(uri: string): BundleLocation {
  if (uri.length > MAX_URI_CHARS) throw bad(uri, `longer than ${MAX_URI_CHARS} characters`);
  if (!/^[\x21-\x7e]+$/.test(uri)) throw bad(uri, "only printable ASCII without spaces is allowed");
  if (uri.includes("?")) throw bad(uri, "a query is not allowed");
  if (uri.includes("#")) throw bad(uri, "a fragment is not allowed");
  if (uri.includes("%")) throw bad(uri, "percent-encoding is not allowed (nothing is decoded)");
  if (uri.includes("\\")) throw bad(uri, "backslashes are not allowed");
  const scheme = /^([a-z+]+):\/\//.exec(uri)?.[1];
  const rest = scheme === undefined ? "" : uri.slice(scheme.length + 3);
  switch (scheme) {
    case "file": {
      if (!rest.startsWith("/")) throw bad(uri, "file locations are file:///absolute/dir (no host)", "write three slashes: file:///path");
      return { kind: "file", dir: checkPath(uri, rest, false) };
    }
    case "https": {
      const slash = rest.indexOf("/");
      const authority = slash === -1 ? rest : rest.slice(0, slash);
      const { host, port } = checkAuthority(uri, authority);
      const path = slash === -1 ? "" : checkPath(uri, rest.slice(slash), true);
      return { kind: "https", base: `https://${host}${port === undefined ? "" : `:${port}`}${path}` };
    }
    case "oci":
    case "oci+http": {
      const slash = rest.indexOf("/");
      if (slash === -1) throw bad(uri, "an OCI location names a repository: oci://host/repository");
      const { host, port } = checkAuthority(uri, rest.slice(0, slash));
      const plain = scheme === "oci+http";
      if (plain && !isLoopbackHost(host)) throw bad(uri, "plain http is allowed only to loopback registries", "use oci://HOST/REPO (https)");
      let repository = rest.slice(slash + 1);
      let tag: string | undefined;
      const colon = repository.lastIndexOf(":");
      if (colon !== -1) {
        tag = repository.slice(colon + 1);
        repository = repository.slice(0, colon);
        if (!TAG.test(tag)) throw bad(uri, "malformed tag");
      }
      try {
        checkRepository(repository);
      } catch {
        throw bad(uri, "malformed repository (lowercase path components)");
      }
      const origin = `${plain ? "http" : "https"}://${host}${port === undefined ? "" : `:${port}`}`;
      return { kind: "oci", origin, repository, ...(tag === undefined ? {} : { tag }) };
    }
    default:
      throw bad(uri, "the scheme must be file://, https://, oci:// or oci+http://");
  }
}

/**
 * Parses a push destination (no digest; `https://` is pull-only).
 * @throws InvalidArgumentError
 */
export function parseBundleDestination(uri: string): BundleLocation {
  if (DIGEST_SUFFIX.test(uri)) throw bad(uri, "a push destination takes no digest (the push reports it)");
  const location = parseLocation(uri);
  if (location.kind === "https") throw bad(uri, "https:// locations are read-only", "push to file:///DIR and serve that directory, or to an OCI registry");
  return location;
}

/**
 * Parses a pull source: a location and `@sha256:<digest>`.
 * @throws InvalidArgumentError
 */
export function parseBundleSource(uri: string): BundleSource {
  if (uri.length > MAX_URI_CHARS) throw bad(uri, `longer than ${MAX_URI_CHARS} characters`);
  const m = DIGEST_SUFFIX.exec(uri);
  if (m === null) throw bad(uri, "a pull source must be pinned to a digest: LOCATION@sha256:<64 hex>");
  const location = parseLocation(uri.slice(0, m.index));
  if (location.kind === "oci" && location.tag !== undefined) throw bad(uri, "a pull source takes a digest, not a tag");
  return { location, digest: m[1] as Sha256Digest };
}

/** The location as a string (the form the parsers accept, without a digest). */
export function formatLocation(location: BundleLocation): string {
  switch (location.kind) {
    case "file":
      return `file://${location.dir}`;
    case "https":
      return location.base;
    case "oci": {
      const url = new URL(location.origin);
      return `${url.protocol === "http:" ? "oci+http" : "oci"}://${url.host}/${location.repository}${location.tag === undefined ? "" : `:${location.tag}`}`;
    }
  }
}
