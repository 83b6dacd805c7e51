// A test reporter that prints nothing while tests run and, at the end, one block per failed
// test: its file, its name and the first lines of its error. run-tests.mjs adds it after the TAP
// reporter, so a long log's tail always says which case failed and why.
import { relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;

function describe(error) {
  const cause = error?.cause ?? error;
  const text = cause instanceof Error ? (cause.stack ?? String(cause)) : String(cause);
  return text.split("\n").slice(0, 12).map((l) => `    ${l}`).join("\n");
}

export default async function* failures(source) {
  const failed = [];
  for await (const event of source) {
    if (event.type !== "test:fail") continue;
    const { name, file, details } = event.data;
    // A suite fails when one of its cases does; the case itself is reported.
    if (details?.error?.failureType === "subtestsFailed") continue;
    failed.push({ name, file: file ? relative(root, file) : "?", error: details?.error });
  }
  if (failed.length === 0) return;
  yield `\n# ${failed.length} failed:\n`;
  for (const f of failed) yield `# ${f.file}: ${f.name}\n${describe(f.error)}\n`;
}
