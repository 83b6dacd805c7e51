/**
 * Image references: what a caller may write where an image is expected, and its canonical form.
 *
 * - `sha256:<64 hex>`: a digest, resolved only against blobs already in the store.
 * - `debian:<suite>[+pkg[+pkg…]]`: built with mmdebstrap when missing. Canonical form lists the
 *   packages sorted and without duplicates, so `debian:bookworm+b+a` and `debian:bookworm+a+b`
 *   name the same image.
 * - anything else that matches {@link ImageRefSchema}: a local name given at import.
 */
import { ImageRefSchema, InvalidArgumentError, type Sha256Digest } from "@mvm/protocol";

/** The image a sandbox gets when the caller names none. */
export const defaultImageRef = "debian:bookworm+python3";

/** Most packages one `debian:` reference may list. */
export const MAX_DEBIAN_PACKAGES = 64;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
/** Debian suite or codename, e.g. `bookworm`, `stable`, `sid`. */
const SUITE_RE = /^[a-z][a-z0-9-]{0,31}$/;
/**
 * A Debian binary package name (Debian Policy 5.6.1) without `+`, which separates packages in a
 * reference: lowercase letters, digits, `.` and `-`, starting with a letter or digit, 2–100 chars.
 */
const PACKAGE_RE = /^[a-z0-9][a-z0-9.-]{1,99}$/;

export type ParsedImageRef =
  | { readonly kind: "digest"; readonly ref: Sha256Digest; readonly digest: Sha256Digest }
  | { readonly kind: "debian"; readonly ref: string; readonly suite: string; readonly packages: readonly string[] }
  | { readonly kind: "name"; readonly ref: string };

/** True when `value` is a well-formed `sha256:<64 lowercase hex>` digest. */
export function isSha256Digest(value: string): value is Sha256Digest {
  return DIGEST_RE.test(value);
}

/**
 * Parses and canonicalizes an image reference.
 * @throws InvalidArgumentError when the reference is malformed.
 * @example parseImageRef("debian:bookworm+python3+curl").ref === "debian:bookworm+curl+python3"
 */
export function parseImageRef(input: string): ParsedImageRef {
  if (!ImageRefSchema.safeParse(input).success) {
    throw new InvalidArgumentError(
      `Invalid image reference ${quote(input)}: expected "debian:<suite>[+pkg…]", "sha256:<hex>" or a local name of lowercase letters, digits and . _ : + - / (at most 512 characters)`,
    );
  }
  if (input.startsWith("sha256:")) {
    if (!isSha256Digest(input)) {
      throw new InvalidArgumentError(`Invalid image digest ${quote(input)}: expected "sha256:" and 64 lowercase hex digits`);
    }
    return { kind: "digest", ref: input, digest: input };
  }
  if (input.startsWith("debian:")) return parseDebian(input);
  return { kind: "name", ref: input };
}

/**
 * Validates a name given to an imported image. `debian:` and `sha256:` are reserved: an import
 * must not pose as a built image or a digest. Names ending in `@sha256:<hex>` are reserved for
 * registry pulls (`allowPinned`), whose content is verified against that digest.
 * @throws InvalidArgumentError when the name is malformed or reserved.
 */
export function parseLocalName(name: string, options: { allowPinned?: boolean } = {}): string {
  const parsed = parseImageRef(name);
  if (parsed.kind !== "name") {
    throw new InvalidArgumentError(
      `Invalid image name ${quote(name)}: names starting with "debian:" or "sha256:" are reserved`,
    );
  }
  if (options.allowPinned !== true && parsed.ref.includes("@")) {
    throw new InvalidArgumentError(`Invalid image name ${quote(name)}: names ending in "@sha256:<hex>" are given only by a registry pull`);
  }
  return parsed.ref;
}

function parseDebian(input: string): ParsedImageRef {
  const [suite = "", ...packages] = input.slice("debian:".length).split("+");
  if (!SUITE_RE.test(suite)) {
    throw new InvalidArgumentError(
      `Invalid image reference ${quote(input)}: suite ${quote(suite)} must be lowercase letters, digits and "-" (e.g. "bookworm")`,
    );
  }
  for (const pkg of packages) {
    if (!PACKAGE_RE.test(pkg)) {
      throw new InvalidArgumentError(
        `Invalid image reference ${quote(input)}: package ${quote(pkg)} is not a Debian package name (lowercase letters, digits, "." and "-", at least 2 characters)`,
      );
    }
  }
  const unique = [...new Set(packages)].sort();
  if (unique.length > MAX_DEBIAN_PACKAGES) {
    throw new InvalidArgumentError(
      `Invalid image reference ${quote(input)}: ${unique.length} packages listed, at most ${MAX_DEBIAN_PACKAGES} allowed`,
    );
  }
  const ref = ["debian:" + suite, ...unique].join("+");
  return { kind: "debian", ref, suite, packages: unique };
}

/** JSON-quotes a value for an error message, shortened so hostile input cannot flood logs. */
export function quote(value: string, max = 200): string {
  return JSON.stringify(value.length > max ? `${value.slice(0, max)}…` : value);
}
