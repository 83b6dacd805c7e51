import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { advisoryFindings, lockfileViolations } from "./audit-deps.mjs";

const allow = { installScripts: { esbuild: "checked" }, advisories: [{ url: "https://github.com/advisories/GHSA-aaaa", reason: "not reachable from our use", expires: "2999-01-01" }] };
const pkg = (extra = {}) => ({ version: "1.2.3", integrity: "sha512-AAAA", ...extra });

describe("dependency audit: lockfile rules", () => {
  it("passes this repository's lockfile", () => {
    const lock = JSON.parse(readFileSync(new URL("../package-lock.json", import.meta.url), "utf8"));
    const real = JSON.parse(readFileSync(new URL("./audit-allowlist.json", import.meta.url), "utf8"));
    assert.deepEqual(lockfileViolations(lock, real), []);
  });

  it("names a package without sha512 integrity, from another source, or with an unlisted install script", () => {
    const lock = {
      lockfileVersion: 3,
      packages: {
        "": {},
        "node_modules/ok": pkg(),
        "node_modules/esbuild": pkg({ hasInstallScript: true }),
        "node_modules/sha1": pkg({ integrity: "sha1-AAAA" }),
        "node_modules/git": pkg({ version: "git+ssh://git@example.invalid/x.git", resolved: "git+ssh://git@example.invalid/x.git" }),
        "node_modules/tarball": pkg({ resolved: "https://example.invalid/t.tgz" }),
        "node_modules/a/node_modules/postinstall": pkg({ hasInstallScript: true }),
        "node_modules/@mvm/sdk": { link: true, resolved: "packages/sdk" },
        "node_modules/evil-link": { link: true, resolved: "../../elsewhere" },
      },
    };
    const v = lockfileViolations(lock, allow);
    assert.equal(v.length, 6, v.join("\n"));
    for (const name of ["sha1", "git", "tarball", "postinstall", "evil-link"]) assert.ok(v.some((l) => l.includes(name)), name);
    assert.deepEqual(lockfileViolations({ lockfileVersion: 2, packages: {} }, allow), ["lockfileVersion is 2, expected 3"]);
  });
});

describe("dependency audit: advisories", () => {
  const report = (severity, url) =>
    JSON.stringify({ auditReportVersion: 2, vulnerabilities: { x: { name: "x", severity, via: [{ source: 1, name: "x", title: "bad", url, severity, range: "<2" }, "y"] } } });
  const now = new Date("2026-12-07");

  it("fails on a high or critical advisory that the allowlist does not accept", () => {
    assert.equal(advisoryFindings(report("high", "https://github.com/advisories/GHSA-bbbb"), allow, now).failing.length, 1);
    assert.equal(advisoryFindings(report("critical", "https://github.com/advisories/GHSA-bbbb"), allow, now).failing.length, 1);
    assert.equal(advisoryFindings(report("moderate", "https://github.com/advisories/GHSA-bbbb"), allow, now).failing.length, 0);
  });

  it("accepts an allowlisted advisory only until its expiry", () => {
    const r = advisoryFindings(report("high", "https://github.com/advisories/GHSA-aaaa"), allow, now);
    assert.deepEqual([r.failing.length, r.accepted.length], [0, 1]);
    const later = advisoryFindings(report("high", "https://github.com/advisories/GHSA-aaaa"), allow, new Date("3000-01-01"));
    assert.equal(later.failing.length, 1);
  });

  it("reports an unreachable advisory database as such, never as clean", () => {
    const r = advisoryFindings(JSON.stringify({ message: "405 Method Not Allowed - POST https://registry.npmjs.org/-/npm/v1/security/advisories/bulk" }), allow, now);
    assert.equal(r.reachable, false);
    assert.equal(advisoryFindings("not json", allow, now).reachable, false);
  });
});
