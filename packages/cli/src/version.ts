/**
 * mvmctl's version, read from the package's package.json.
 */
import { readFileSync } from "node:fs";

function readVersion(): string {
  try {
    const pkg: unknown = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
    const v = (pkg as { version?: unknown }).version;
    return typeof v === "string" ? v : "unknown";
  } catch {
    return "unknown";
  }
}

export const VERSION: string = readVersion();
