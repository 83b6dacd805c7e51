// Every code block of README.md is checked: ```ts and ```js blocks are type-checked against the
// SDK's built types (as ES modules, Node 20, TypeScript's lib with ESNext.Disposable), and ```js
// blocks, the ones that run as written in an .mjs file, are also run with plain `node` against a
// real engine (namespace backend, a private state directory, behind a daemon this test starts on
// a private socket); ```sh blocks parse
// (`bash -n`) and every `mvmctl` command in them names a real command, real flags and an allowed
// number of arguments (checked against mvmctl's own command table); ```python blocks parse;
// ```json blocks are JSON. A block that cannot be checked is preceded by
// `<!-- doctest: skip (reason) -->`; the skipped blocks are listed in the test's output.
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { parseJsonStrict } from "../packages/protocol/dist/index.js";
import { parseCommandArgs } from "../packages/cli/dist/args.js";
import { COMMANDS } from "../packages/cli/dist/commands/index.js";
import { GLOBAL_FLAGS } from "../packages/cli/dist/flags.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const README = join(ROOT, "README.md");
const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const SKIP_MARKER = /^<!--\s*doctest:\s*skip\s*\(([^)]+)\)\s*-->\s*$/;

/**
 * The fenced blocks of a Markdown text, with their language, first line (1-based) and whether a
 * skip marker (and its reason) precedes them.
 * @returns {{ lang: string; line: number; code: string; skip: string | undefined }[]}
 */
export function codeBlocks(text) {
  const lines = text.split("\n");
  const blocks = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]);
    if (!open) continue;
    let end = i + 1;
    while (end < lines.length && lines[end] !== "```") end++;
    if (end === lines.length) throw new Error(`README.md:${i + 1}: a code block is not closed`);
    let prev = i - 1;
    while (prev >= 0 && lines[prev].trim() === "") prev--;
    const marker = prev >= 0 ? SKIP_MARKER.exec(lines[prev]) : null;
    blocks.push({ lang: open[1], line: i + 1, code: lines.slice(i + 1, end).join("\n") + "\n", skip: marker?.[1] });
    i = end;
  }
  return blocks;
}

/**
 * The words of the `mvmctl` commands in a shell text: after a comment is cut, each line is split
 * at `;`, `&&`, `||`, `|`, `&` and `$(`…`)`, and a part that starts with `mvmctl` (or
 * `VAR=$(mvmctl`) gives its words up to a redirection. Quotes are removed; `$var` stays a word.
 * @returns {{ line: string; words: string[] }[]}
 */
export function mvmctlInvocations(script) {
  const out = [];
  for (const raw of script.split("\n")) {
    const words = shellWords(raw);
    let current;
    for (const w of words) {
      if (w.op) {
        if (current) out.push(current);
        current = undefined;
        continue;
      }
      if (current) current.words.push(w.word);
      else if (w.word === "mvmctl" && !w.quoted) current = { line: raw.trim(), words: [] };
    }
    if (current) out.push(current);
  }
  return out;
}

/** Tokens of one shell line: words (quotes removed) and operators. A redirection's target is dropped. */
function shellWords(line) {
  const tokens = [];
  let i = 0;
  let word = "";
  let inWord = false;
  let quoted = false;
  const flush = () => {
    if (inWord) tokens.push({ word, quoted });
    word = "";
    inWord = false;
    quoted = false;
  };
  while (i < line.length) {
    const c = line[i];
    if (c === "'" || c === '"') {
      const close = line.indexOf(c, i + 1);
      const end = close < 0 ? line.length : close;
      word += line.slice(i + 1, end);
      inWord = true;
      quoted = true;
      i = end + 1;
      continue;
    }
    if (c === "#" && !inWord) break;
    if (c === " " || c === "\t") {
      flush();
      i++;
      continue;
    }
    if (line.startsWith("$(", i)) {
      flush();
      tokens.push({ op: "subshell" });
      i += 2;
      continue;
    }
    if (c === ")" || c === ";" || c === "|" || c === "&") {
      flush();
      tokens.push({ op: "sep" });
      i += line.startsWith("&&", i) || line.startsWith("||", i) ? 2 : 1;
      continue;
    }
    if (c === "<" || c === ">") {
      // `2>`: the digit was read as a word.
      if (inWord && /^\d+$/.test(word) && !quoted) {
        word = "";
        inWord = false;
      }
      flush();
      tokens.push({ op: "redirect" });
      i += line.startsWith(">>", i) ? 2 : 1;
      continue;
    }
    word += c;
    inWord = true;
    i++;
  }
  flush();
  return tokens;
}

/** Checks one `mvmctl` invocation against the command table; returns an error message or undefined. */
export function checkInvocation(words) {
  let i = 0;
  // Global flags may come before the command word.
  while (i < words.length && words[i].startsWith("-")) {
    const name = words[i].replace(/^--?/, "").split("=")[0];
    const known = ["version", "V"].includes(name) || Object.entries(GLOBAL_FLAGS).some(([n, f]) => n === name || f.short === name);
    if (!known) return `unknown global option "${words[i]}"`;
    if (name === "socket" && !words[i].includes("=")) i++;
    i++;
  }
  if (i >= words.length) return undefined;
  let command = COMMANDS.find((c) => c.name === words[i]);
  let consumed = 1;
  if (!command) {
    command = COMMANDS.find((c) => c.name === `${words[i]} ${words[i + 1]}`);
    consumed = 2;
  }
  if (!command) return `no command "${words.slice(i, i + 2).join(" ")}"`;
  let parsed;
  try {
    parsed = parseCommandArgs(command, words.slice(i + consumed));
  } catch (err) {
    return err.message;
  }
  const { min, max } = command.positionals;
  const n = parsed.positionals.length;
  if (n < min) return `"mvmctl ${command.name}" needs ${command.usage}`;
  if (n > max && !(command.trailingCommand && parsed.trailing === undefined)) return `"mvmctl ${command.name}" takes at most ${max} arguments`;
  return undefined;
}

const TS_OPTIONS = {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  lib: ["lib.es2022.d.ts", "lib.esnext.disposable.d.ts"],
  types: ["node"],
};

/** Type errors of blocks, each checked as its own ES module beside the repository's node_modules. */
function typeErrors(blocks) {
  const dir = join(ROOT, "node_modules", ".cache");
  const files = new Map(blocks.map((b) => [join(dir, `readme-${b.line}.mts`), `${b.code}\nexport {};\n`]));
  const host = ts.createCompilerHost(TS_OPTIONS);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) => (files.has(name) ? ts.createSourceFile(name, files.get(name), lang, true) : getSourceFile(name, lang, ...rest));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => files.has(name) || fileExists(name);
  const readFile = host.readFile.bind(host);
  host.readFile = (name) => files.get(name) ?? readFile(name);
  const program = ts.createProgram([...files.keys()], TS_OPTIONS, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file ? `README.md block at line ${d.file.fileName.match(/readme-(\d+)/)?.[1] ?? d.file.fileName}: ` : "";
    const pos = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined;
    return `${where}${pos ? `(+${pos.line + 1}) ` : ""}${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
  });
}

const blocks = codeBlocks(readFileSync(README, "utf8"));
const checked = blocks.filter((b) => b.skip === undefined);
const skipped = blocks.filter((b) => b.skip !== undefined);

describe("the doc test's own checks", () => {
  it("finds mvmctl commands in shell lines and refuses unknown commands, flags and argument counts", () => {
    assert.deepEqual(
      mvmctlInvocations('id=$(mvmctl create --memory 512 --ttl 600)  # note\nmvmctl secret set k --host a.example < key.txt; mvmctl secret ls\necho "mvmctl x"'),
      [
        { line: "id=$(mvmctl create --memory 512 --ttl 600)  # note", words: ["create", "--memory", "512", "--ttl", "600"] },
        { line: "mvmctl secret set k --host a.example < key.txt; mvmctl secret ls", words: ["secret", "set", "k", "--host", "a.example"] },
        { line: "mvmctl secret set k --host a.example < key.txt; mvmctl secret ls", words: ["secret", "ls"] },
      ],
    );
    assert.equal(checkInvocation(["exec", "$id", "--", "sh", "-c", "echo hi"]), undefined);
    assert.equal(checkInvocation(["--json", "ls"]), undefined);
    assert.match(checkInvocation(["frobnicate"]), /no command "frobnicate"/);
    assert.match(checkInvocation(["create", "--memroy", "512"]), /Unknown option "--memroy"/);
    assert.match(checkInvocation(["kill"]), /needs/);
    assert.match(checkInvocation(["--nope", "ls"]), /unknown global option/);
  });

  it("reads a skip marker before a block", () => {
    const blocks = codeBlocks("text\n\n<!-- doctest: skip (needs a remote registry) -->\n\n```sh\nmvmctl x\n```\n```ts\nlet a = 1;\n```\n");
    assert.deepEqual(blocks.map((b) => [b.lang, b.line, b.skip]), [["sh", 5, "needs a remote registry"], ["ts", 8, undefined]]);
  });
});

describe("README code blocks", () => {
  it("are listed: which are checked and which are skipped, and why", (t) => {
    const byLang = {};
    for (const b of checked) byLang[b.lang || "text"] = (byLang[b.lang || "text"] ?? 0) + 1;
    t.diagnostic(`checked: ${JSON.stringify(byLang)}; skipped: ${skipped.length}`);
    for (const b of skipped) t.diagnostic(`skipped: README.md:${b.line} (${b.lang}): ${b.skip}`);
    assert.ok(checked.some((b) => b.lang === "js"), "the README has a ```js example");
    // A skip marker is the exception: each one is a block nobody checks.
    assert.ok(skipped.length <= 2, `at most 2 skipped blocks, got ${skipped.length}`);
  });

  it("```ts and ```js blocks type-check against the SDK", () => {
    const code = checked.filter((b) => b.lang === "ts" || b.lang === "js");
    assert.ok(code.length > 0);
    assert.deepEqual(typeErrors(code), []);
  });

  it("```sh blocks parse, and each mvmctl command in them is a real command with real flags", () => {
    const sh = checked.filter((b) => b.lang === "sh" || b.lang === "bash");
    assert.ok(sh.length > 0);
    let commands = 0;
    for (const b of sh) {
      const r = spawnSync("bash", ["-n"], { input: b.code, encoding: "utf8" });
      assert.equal(r.status, 0, `README.md:${b.line}: bash -n: ${r.stderr}`);
      for (const inv of mvmctlInvocations(b.code)) {
        commands++;
        const problem = checkInvocation(inv.words);
        assert.equal(problem, undefined, `README.md:${b.line}: ${inv.line}: ${problem}`);
      }
    }
    assert.ok(commands > 10, `found ${commands} mvmctl commands`);
  });

  it("```python blocks parse and ```json blocks are JSON", () => {
    for (const b of checked.filter((x) => x.lang === "python")) {
      const r = spawnSync("python3", ["-c", "import ast, sys; ast.parse(sys.stdin.read())"], { input: b.code, encoding: "utf8" });
      assert.equal(r.status, 0, `README.md:${b.line}: ${r.stderr}`);
    }
    for (const b of checked.filter((x) => x.lang === "json")) assert.doesNotThrow(() => parseJsonStrict(b.code), `README.md:${b.line}`);
  });

  const present = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);
  let work;
  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });
  it("```js blocks run as written with node against a real engine", { skip: present ? false : `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh` }, async () => {
    // The sandbox's uid must pass through the state directory's parents.
    work = mkdtempSync(join(tmpdir(), "mvm-readme-"));
    chmodSync(work, 0o711);
    // Beside the repository's node_modules, so that "@mvm/sdk" resolves to the workspace package.
    const dir = join(ROOT, "node_modules", ".cache", `readme-doctest-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    const { openEngine, startDaemonServer } = await import("../packages/engine/dist/index.js");
    const stateDir = join(work, "state");
    const engine = await openEngine({ stateDir, imagesDir: IMAGES, defaultBackend: "namespace", backends: ["namespace"] });
    const socketPath = join(stateDir, "run", "d.sock");
    const server = await startDaemonServer({ engine, socketPath });
    try {
      for (const b of checked.filter((x) => x.lang === "js")) {
        const file = join(dir, `readme-${b.line}.mjs`);
        writeFileSync(file, b.code);
        // Asynchronously: the daemon answering it runs in this process.
        const r = await new Promise((resolve) => {
          execFile(
            process.execPath,
            [file],
            { timeout: 120_000, env: { ...process.env, MVM_DAEMON_SOCKET: socketPath, MVM_ACK_CONTAINER_TIER: "1" } },
            (error, stdout, stderr) => resolve({ error, stdout, stderr }),
          );
        });
        assert.equal(r.error, null, `README.md:${b.line}: ${r.stderr}`);
        assertOutputMatchesComments(b, r.stdout);
      }
      const running = (await engine.listSandboxes()).filter((s) => s.state === "running");
      assert.deepEqual(running, [], "the blocks kill the sandboxes they create");
    } finally {
      await server.close();
      await engine.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Each `console.log(…); // VALUE` line's comment is the output the block promises; VALUE must be in what it printed. */
function assertOutputMatchesComments(block, stdout) {
  for (const m of block.code.matchAll(/console\.log\(.*\);\s*\/\/\s*(.+)$/gm)) {
    const promised = m[1].replace(/"([^"]*)"/g, (_, s) => s.replace(/\\n/g, "\n")).trim();
    assert.ok(stdout.includes(promised.replace(/\n$/, "")), `README.md:${block.line}: promised ${JSON.stringify(m[1])}, printed ${JSON.stringify(stdout)}`);
  }
}
