#!/usr/bin/env node
// Writes docs/openapi.json from the protocol's zod schemas (run `npm run build` first).
// Usage: node scripts/openapi.mjs [--check]   (--check: exit 1 when the committed file differs)
import { readFileSync, writeFileSync } from "node:fs";
import { openApiDocument } from "../packages/protocol/dist/index.js";

const target = new URL("../docs/openapi.json", import.meta.url);
const text = `${JSON.stringify(openApiDocument(), null, 2)}\n`;
if (process.argv.includes("--check")) {
  let current = "";
  try {
    current = readFileSync(target, "utf8");
  } catch {}
  if (current !== text) {
    console.error("docs/openapi.json differs from the schemas: run node scripts/openapi.mjs");
    process.exit(1);
  }
} else {
  writeFileSync(target, text);
}
