import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { FakeEngine } from "./_test/fake-engine.js";
import { ScriptedStdin, cli } from "./_test/test-io.js";
import { parseEndpoint } from "./commands/cp.js";
import { scratchDir } from "./_test/scratch.js";

const ID = "sbx_abcdefghijklmnopqrst";

test("endpoints: ID:/path is a sandbox, anything else local", () => {
  assert.deepEqual(parseEndpoint(`${ID}:/work/a b`), { kind: "sandbox", sandboxId: ID, path: "/work/a b" });
  assert.deepEqual(parseEndpoint("./x:y"), { kind: "local", path: "./x:y" });
  assert.deepEqual(parseEndpoint("-"), { kind: "local", path: "-" });
  assert.throws(() => parseEndpoint(`${ID}:/work/`), /Invalid sandbox path/);
  assert.throws(() => parseEndpoint(`${ID}:`), /Invalid sandbox path/);
});

function setup(): { engine: FakeEngine; id: string; dir: string } {
  const engine = new FakeEngine();
  const id = engine.newSandbox().id;
  return { engine, id, dir: scratchDir("cp") };
}

test("cp out of a sandbox writes the file; into a directory under the source's name", async () => {
  const { engine, id, dir } = setup();
  const data = Buffer.alloc(5000, 7);
  engine.files.set(`${id}:/work/out.bin`, data);
  const r = await cli(["cp", `${id}:/work/out.bin`, join(dir, "copy.bin")], { engine });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readFileSync(join(dir, "copy.bin")), data);
  const intoDir = await cli(["cp", "--json", `${id}:/work/out.bin`, dir], { engine });
  assert.deepEqual(JSON.parse(intoDir.stdout), { from: `${id}:/work/out.bin`, to: dir, bytes: 5000 });
  assert.deepEqual(readFileSync(join(dir, "out.bin")), data);
  assert.deepEqual(readdirSync(dir).sort(), ["copy.bin", "out.bin"]);
});

test("cp to - writes stdout; with --json that is a usage error", async () => {
  const { engine, id } = setup();
  engine.files.set(`${id}:/etc/hostname`, Buffer.from("box\n"));
  const r = await cli(["cp", `${id}:/etc/hostname`, "-"], { engine });
  assert.equal(r.stdout, "box\n");
  const j = await cli(["cp", "--json", `${id}:/etc/hostname`, "-"], { engine });
  assert.equal(j.code, 2);
});

test("a sandbox sending more or fewer bytes than announced fails and leaves no file", async () => {
  for (const announced of [10, 100_000]) {
    const { engine, id, dir } = setup();
    engine.files.set(`${id}:/f`, Buffer.alloc(5000));
    engine.announcedSize = announced;
    const target = join(dir, "f");
    const r = await cli(["cp", `${id}:/f`, target], { engine });
    assert.equal(r.code, 1);
    assert.match(r.stderr, announced < 5000 ? /sent more than the 10 bytes it announced/ : /ended after 5000 of the 100000 bytes/);
    assert.deepEqual(readdirSync(dir), []);
  }
});

test("cp into a sandbox streams the file with its mode; into a directory under its own name", async () => {
  const { engine, id, dir } = setup();
  const src = join(dir, "in.txt");
  writeFileSync(src, "payload");
  chmodSync(src, 0o750);
  const r = await cli(["cp", "--json", src, `${id}:/work`], { engine });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { from: src, to: `${id}:/work`, bytes: 7 });
  assert.equal(Buffer.from(engine.files.get(`${id}:/work/in.txt`) ?? []).toString(), "payload");
  const direct = await cli(["cp", src, `${id}:/work/renamed.txt`], { engine });
  assert.equal(direct.code, 0);
  assert.ok(engine.files.has(`${id}:/work/renamed.txt`));
});

test("cp - copies stdin into the sandbox", async () => {
  const { engine, id } = setup();
  const stdin = new ScriptedStdin(false);
  stdin.push("from stdin");
  stdin.end();
  const r = await cli(["cp", "-", `${id}:/work/s.txt`], { engine, stdin });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(Buffer.from(engine.files.get(`${id}:/work/s.txt`) ?? []).toString(), "from stdin");
});

test("cp reports local problems as typed errors", async () => {
  const { engine, id, dir } = setup();
  const missing = await cli(["cp", join(dir, "nope"), `${id}:/work/x`], { engine });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error: Cannot read ".*nope": ENOENT/);
  const isDir = await cli(["cp", dir, `${id}:/work/x`], { engine });
  assert.match(isDir.stderr, /not a regular file/);
});

test("a sandbox storing a different byte count than was sent is an error", async () => {
  const { engine, id, dir } = setup();
  const src = join(dir, "in.txt");
  writeFileSync(src, "payload");
  engine.reportedWriteBytes = 3;
  const r = await cli(["cp", src, `${id}:/work/x`], { engine });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /stored 3 bytes of the 7 sent/);
});
