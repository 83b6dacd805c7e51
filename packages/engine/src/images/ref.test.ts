import { test, describe } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError } from "@mvm/protocol";
import { defaultImageRef, isSha256Digest, MAX_DEBIAN_PACKAGES, parseImageRef, parseLocalName } from "./ref.js";

const HEX = "0123456789abcdef".repeat(4);

describe("parseImageRef", () => {
  test("digests", () => {
    assert.deepEqual(parseImageRef(`sha256:${HEX}`), { kind: "digest", ref: `sha256:${HEX}`, digest: `sha256:${HEX}` });
    for (const bad of [`sha256:${HEX.slice(1)}`, `sha256:${HEX}0`, "sha256:", `sha256:${"g".repeat(64)}`]) {
      assert.throws(() => parseImageRef(bad), InvalidArgumentError, bad);
    }
    assert.throws(() => parseImageRef(`sha256:${HEX.toUpperCase()}`), InvalidArgumentError);
  });

  test("debian references are canonical: packages sorted, duplicates dropped", () => {
    assert.deepEqual(parseImageRef("debian:bookworm"), { kind: "debian", ref: "debian:bookworm", suite: "bookworm", packages: [] });
    assert.deepEqual(parseImageRef("debian:bookworm+python3+curl+python3"), {
      kind: "debian",
      ref: "debian:bookworm+curl+python3",
      suite: "bookworm",
      packages: ["curl", "python3"],
    });
    assert.equal(parseImageRef("debian:trixie+libc6-dev+python3.11-venv").ref, "debian:trixie+libc6-dev+python3.11-venv");
    assert.equal(parseImageRef(defaultImageRef).ref, "debian:bookworm+python3");
  });

  test("debian references refuse anything that is not a plain package name", () => {
    const bad = [
      "debian:",
      "debian:Bookworm",
      "debian:bookworm+",
      "debian:bookworm++python3",
      "debian:bookworm+x", // one character
      "debian:bookworm+-rf",
      "debian:bookworm+.hidden",
      "debian:bookworm+a/b",
      "debian:bookworm+g++",
      "debian:bookworm+python3:amd64",
      "debian:bookworm+a;rm",
      "debian:bookworm+$(id)",
      "debian:bookworm+a b",
      "debian:-bookworm",
      `debian:bookworm+${"a".repeat(101)}`,
    ];
    for (const ref of bad) assert.throws(() => parseImageRef(ref), InvalidArgumentError, ref);
    const many = Array.from({ length: MAX_DEBIAN_PACKAGES + 1 }, (_, i) => `pkg${i}`).join("+");
    assert.throws(() => parseImageRef(`debian:bookworm+${many}`), /at most 64 allowed/);
  });

  test("local names", () => {
    assert.deepEqual(parseImageRef("mytool:v1"), { kind: "name", ref: "mytool:v1" });
    assert.deepEqual(parseImageRef("team/tool-1.2_x"), { kind: "name", ref: "team/tool-1.2_x" });
    for (const bad of ["", "Upper", "-x", "a b", "x".repeat(513), "_x", "a\nb"]) {
      assert.throws(() => parseImageRef(bad), InvalidArgumentError, JSON.stringify(bad));
    }
  });

  test("property: every accepted debian reference has only validated argv-safe packages", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (tail) => {
        let parsed;
        try {
          parsed = parseImageRef(`debian:bookworm+${tail}`);
        } catch (err) {
          assert.ok(err instanceof InvalidArgumentError);
          return;
        }
        assert.equal(parsed.kind, "debian");
        if (parsed.kind !== "debian") return;
        for (const pkg of parsed.packages) assert.match(pkg, /^[a-z0-9][a-z0-9.-]{1,99}$/);
      }),
    );
  });
});

describe("parseLocalName", () => {
  test("reserves debian: and sha256:", () => {
    assert.equal(parseLocalName("mytool"), "mytool");
    assert.throws(() => parseLocalName("debian:bookworm"), /reserved/);
    assert.throws(() => parseLocalName(`sha256:${HEX}`), /reserved/);
    assert.throws(() => parseLocalName("sha256:abc"), InvalidArgumentError);
  });

  test("isSha256Digest", () => {
    assert.equal(isSha256Digest(`sha256:${HEX}`), true);
    assert.equal(isSha256Digest(`sha256:${HEX} `), false);
  });
});
