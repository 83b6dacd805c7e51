/** docs/openapi.json is what the schemas generate: a schema change without a regenerated document fails. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { openApiDocument } from "./openapi.js";
import { parseJsonStrict } from "./json-strict.js";

const DOC_URL = new URL("../../../docs/openapi.json", import.meta.url);

test("docs/openapi.json matches the schemas (regenerate: node scripts/openapi.mjs)", () => {
  assert.equal(readFileSync(DOC_URL, "utf8"), `${JSON.stringify(openApiDocument(), null, 2)}\n`);
});

test("the document names every daemon route once, with an error answer", () => {
  const doc = parseJsonStrict(readFileSync(DOC_URL, "utf8")) as { paths: Record<string, Record<string, { operationId: string; responses: Record<string, unknown> }>> };
  const ids = Object.values(doc.paths).flatMap((methods) => Object.values(methods).map((op) => op.operationId));
  assert.equal(new Set(ids).size, ids.length);
  for (const id of ["createSandbox", "exec", "readFile", "writeFile", "snapshotSandbox", "forkSandbox", "setSecret", "networkEvents"]) assert.ok(ids.includes(id), id);
  for (const methods of Object.values(doc.paths)) for (const op of Object.values(methods)) assert.ok(op.responses.default, op.operationId);
});
