import { test } from "node:test";
import assert from "node:assert/strict";
import { ErrorCode, UnsupportedCapabilityError } from "@mvm/protocol";
import { importOptional, MissingPackageError, requireOptional } from "./optional-package.js";

const ABSENT = "mvm-no-such-package-for-tests";

test("requireOptional and importOptional name the package that is not installed", async () => {
  for (const load of [() => requireOptional(ABSENT, "Doing a thing"), () => importOptional(ABSENT, "Doing a thing")]) {
    await assert.rejects(
      async () => load(),
      (err: unknown) => {
        assert.ok(err instanceof MissingPackageError);
        assert.ok(err instanceof UnsupportedCapabilityError);
        assert.equal(err.code, ErrorCode.UnsupportedCapability);
        assert.equal(err.packageName, ABSENT);
        assert.equal(err.message, `Doing a thing needs the package "${ABSENT}", which is not installed`);
        assert.match(String(err.hint), new RegExp(`npm install ${ABSENT}`));
        return true;
      },
    );
  }
});

test("requireOptional and importOptional load a package that is installed", async () => {
  const viaRequire = requireOptional<{ version: string }>("typescript", "x");
  const viaImport = await importOptional<{ version: string }>("typescript", "x");
  assert.equal(viaImport.version, viaRequire.version);
});
