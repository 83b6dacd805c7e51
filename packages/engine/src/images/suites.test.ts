import { strict as assert } from "node:assert";
import { test } from "node:test";
import { InvalidArgumentError } from "@mvm/protocol";
import { assertKnownSuite, KNOWN_DEBIAN_SUITES, nearestSuite } from "./suites.js";

test("known suites pass", () => {
  for (const suite of KNOWN_DEBIAN_SUITES) assertKnownSuite(suite);
});

test("a misspelt suite is refused with the nearest known name and the list", () => {
  for (const [typo, near] of [
    ["bookwrom", "bookworm"],
    ["trixy", "trixie"],
    ["bulseye", "bullseye"],
    ["stabel", "stable"],
  ] as const) {
    assert.equal(nearestSuite(typo), near);
    assert.throws(
      () => assertKnownSuite(typo),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        err.message.includes(`"${typo}"`) &&
        err.message.includes(`did you mean "${near}"?`) &&
        err.message.includes(KNOWN_DEBIAN_SUITES.join(", ")),
    );
  }
});

test("a suite far from every known one gets the list and no guess", () => {
  assert.equal(nearestSuite("ubuntu-jammy"), undefined);
  assert.throws(() => assertKnownSuite("ubuntu-jammy"), (err: unknown) => err instanceof InvalidArgumentError && !err.message.includes("did you mean"));
});
