/**
 * The Debian suites a `debian:` image may name. A suite outside this list is refused before any
 * download, with the nearest known name as a suggestion, so a typo ("bookwrom") costs nothing.
 */
import { InvalidArgumentError } from "@mvm/protocol";
import { quote } from "./ref.js";

/** Codenames and aliases served by the Debian archive (deb.debian.org), oldest first. */
export const KNOWN_DEBIAN_SUITES: readonly string[] = Object.freeze([
  "bullseye",
  "bookworm",
  "trixie",
  "forky",
  "duke",
  "sid",
  "oldoldstable",
  "oldstable",
  "stable",
  "testing",
  "unstable",
]);

/** Levenshtein distance, with an adjacent transposition counted as one edit. */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i] as number[];
      const prev = d[i - 1] as number[];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j] as number, ((d[i - 2] as number[])[j - 2] as number) + 1);
      }
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}

/** The known suite closest to `suite` (at most 2 edits, or 3 for names of 8+ letters), if one is. */
export function nearestSuite(suite: string, known: readonly string[] = KNOWN_DEBIAN_SUITES): string | undefined {
  const limit = suite.length >= 8 ? 3 : 2;
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const name of known) {
    const distance = editDistance(suite, name);
    if (distance < bestDistance) {
      best = name;
      bestDistance = distance;
    }
  }
  return bestDistance <= limit ? best : undefined;
}

/**
 * Checks that `suite` is a Debian suite mmdebstrap can build.
 * @throws InvalidArgumentError naming the nearest known suite and listing them all.
 * @example assertKnownSuite("bookwrom") // throws: Unknown Debian suite "bookwrom" … did you mean "bookworm"?
 */
export function assertKnownSuite(suite: string, known: readonly string[] = KNOWN_DEBIAN_SUITES): void {
  if (known.includes(suite)) return;
  const near = nearestSuite(suite, known);
  throw new InvalidArgumentError(
    `Unknown Debian suite ${quote(suite)}${near === undefined ? "" : `: did you mean ${quote(near)}?`} Known suites: ${known.join(", ")}`,
    { hint: near === undefined ? `use one of: ${known.join(", ")}` : `use debian:${near}` },
  );
}
