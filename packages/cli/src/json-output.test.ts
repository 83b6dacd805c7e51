import { test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ExitInfo, NotFoundError, SandboxInfo, Sha256DigestSchema } from "@mvm/protocol";
import { FakeEngine } from "./_test/fake-engine.js";
import { cli } from "./_test/test-io.js";

const ImageInfoJson = z.strictObject({ digest: Sha256DigestSchema, refs: z.array(z.string()), sizeBytes: z.number(), createdAt: z.string() });
const ExecJson = z.strictObject({
  sandboxId: z.string(),
  exitCode: z.number().int(),
  exit: ExitInfo,
  stdout: z.string(),
  stderr: z.string(),
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
});
const RunJson = ExecJson.extend({ sandbox: SandboxInfo });
const ErrorJson = z.strictObject({ error: z.strictObject({ code: z.string(), message: z.string(), hint: z.string().optional() }) });
const quiet = { MVM_ACK_CONTAINER_TIER: "1" };

test("create --json prints the SandboxInfo; without --json the id", async () => {
  const engine = new FakeEngine();
  const human = await cli(["create", "--label", "a=b"], { engine, env: quiet });
  assert.match(human.stdout, /^sbx_[a-z2-7]{20}\n$/);
  const json = await cli(["create", "--json", "--memory", "256"], { engine, env: quiet });
  assert.equal(json.code, 0);
  const info = SandboxInfo.parse(JSON.parse(json.stdout));
  assert.deepEqual(info.resources, { memoryMiB: 256 });
  assert.equal(json.stderr, "");
});

test("ls --json prints an array of SandboxInfo; human output is a table", async () => {
  const engine = new FakeEngine();
  engine.newSandbox({ labels: { team: "ci" } });
  engine.newSandbox();
  const json = await cli(["ls", "--json"], { engine });
  const list = z.array(SandboxInfo).parse(JSON.parse(json.stdout));
  assert.equal(list.length, 2);
  const human = await cli(["ls"], { engine });
  const lines = human.stdout.trimEnd().split("\n");
  assert.match(lines[0] ?? "", /^ID\s+STATE\s+BACKEND\s+TIER\s+IMAGE\s+CREATED\s+EXPIRES\s+LABELS$/);
  assert.equal(lines.length, 3);
  assert.match(lines[1] ?? "", /team=ci$/);
});

test("ls --json with no sandboxes prints []", async () => {
  const r = await cli(["ls", "--json"], { engine: new FakeEngine() });
  assert.deepEqual(JSON.parse(r.stdout), []);
});

test("image pull --json prints ImageInfo; image import keeps an oci-layout: or docker-archive: prefix and makes the path absolute", async () => {
  const engine = new FakeEngine();
  const pull = await cli(["image", "pull", "--json", "reg.example:5000/team/app:1"], { engine });
  ImageInfoJson.parse(JSON.parse(pull.stdout));
  assert.ok(engine.calls.includes("pullImage reg.example:5000/team/app:1"));
  await cli(["image", "import", "oci-layout:rel/dir", "t/one"], { engine });
  await cli(["image", "import", "docker-archive:/abs/img.tar", "t/two"], { engine });
  assert.ok(engine.calls.includes(`importImage oci-layout:${process.cwd()}/rel/dir t/one`), engine.calls.join("; "));
  assert.ok(engine.calls.includes("importImage docker-archive:/abs/img.tar t/two"), engine.calls.join("; "));
});

test("image ls and image build --json print ImageInfo; image rm --json prints {removed}", async () => {
  const engine = new FakeEngine();
  const ls = await cli(["image", "ls", "--json"], { engine });
  z.array(ImageInfoJson).parse(JSON.parse(ls.stdout));
  const build = await cli(["image", "build", "--json", "--force", "debian:bookworm"], { engine });
  ImageInfoJson.parse(JSON.parse(build.stdout));
  assert.ok(engine.calls.includes("buildImage debian:bookworm force"));
  const rm = await cli(["image", "rm", "--json", "debian:bookworm"], { engine });
  assert.deepEqual(JSON.parse(rm.stdout), { removed: "debian:bookworm" });
  const humanLs = await cli(["image", "ls"], { engine });
  assert.match(humanLs.stdout, /^DIGEST\s+REFS\s+SIZE\s+CREATED\nsha256:abababababab\s+debian:bookworm\+python3\s+120\.6 KiB\s+2025/);
});

test("run --json prints one result object with the captured output and the sandbox", async () => {
  const engine = new FakeEngine();
  engine.script = async (p) => {
    p.handlers.onStdout?.(Buffer.from("hello\n"));
    p.handlers.onStderr?.(Buffer.from("oops\n"));
    return { exitCode: 3, stdoutBytes: 6, stderrBytes: 5 };
  };
  const r = await cli(["run", "--json", "--", "sh", "-c", "x"], { engine, env: quiet });
  assert.equal(r.code, 3);
  const out = RunJson.parse(JSON.parse(r.stdout));
  assert.equal(out.stdout, "hello\n");
  assert.equal(out.stderr, "oops\n");
  assert.equal(out.exitCode, 3);
  assert.equal(out.sandboxId, out.sandbox.id);
  assert.equal(r.stderr, "");
  // The engine is asked to cap output at what the JSON result keeps.
  assert.equal(engine.processes[0]?.request.maxOutputBytes, 8 * 1024 * 1024);
});

test("exec --json prints the exec result", async () => {
  const engine = new FakeEngine();
  const sb = engine.newSandbox();
  const r = await cli(["exec", "--json", sb.id, "--", "true"], { engine, env: quiet });
  assert.equal(r.code, 0);
  const out = ExecJson.parse(JSON.parse(r.stdout));
  assert.equal(out.sandboxId, sb.id);
});

test("kill --json prints one entry per id and exits 1 when any failed", async () => {
  const engine = new FakeEngine();
  const sb = engine.newSandbox();
  const missing = "sbx_zzzzzzzzzzzzzzzzzzzz";
  const r = await cli(["kill", "--json", sb.id, missing], { engine });
  assert.equal(r.code, 1);
  const out = JSON.parse(r.stdout) as unknown[];
  assert.equal(out.length, 2);
  const [ok, failed] = out as [{ ok: boolean; sandbox: unknown }, { ok: boolean; error: { code: string } }];
  assert.equal(ok.ok, true);
  assert.equal(SandboxInfo.parse(ok.sandbox).state, "stopped");
  assert.deepEqual(failed, { id: missing, ok: false, error: { code: "NOT_FOUND", message: `Sandbox "${missing}" not found` } });
  assert.match(r.stderr, /^error: Sandbox "sbx_z+" not found\n$/);
});

test("doctor --json prints the health report with the verdict", async () => {
  const engine = new FakeEngine();
  const r = await cli(["doctor", "--json"], { engine });
  assert.equal(r.code, 0);
  const out = JSON.parse(r.stdout) as { usable: boolean; backends: unknown[]; defaultBackend: string };
  assert.equal(out.usable, true);
  assert.equal(out.defaultBackend, "namespace");
  assert.equal(out.backends.length, 1);
});

test("doctor prints each backend with its tier and each check with a fix hint, exit 1 when none is usable", async () => {
  const engine = new FakeEngine();
  const ok = await cli(["doctor"], { engine });
  assert.equal(ok.code, 0);
  assert.match(ok.stdout, /^namespace: tier container \(shared host kernel\), usable$/m);
  assert.match(ok.stdout, /^  ok    bwrap: bubblewrap 0\.8\.0$/m);
  assert.match(ok.stdout, /^  FAIL  cgroup: no memory controller\n        fix: enable cgroup v2 delegation$/m);
  assert.match(ok.stdout, /^  limits enforceable: memory yes, pids yes, cpu no$/m);

  const broken = new FakeEngine();
  const first = broken.health_.backends[0];
  assert.ok(first !== undefined);
  broken.health_ = {
    ...broken.health_,
    defaultBackend: null,
    backends: [first, { ...first, usable: false }].map((b) => ({ ...b, usable: false })),
  };
  const bad = await cli(["doctor"], { engine: broken });
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /NOT usable/);
  assert.match(bad.stderr, /^error: no backend can start sandboxes on this host\nhint: /);
  const badJson = await cli(["doctor", "--json"], { engine: broken });
  assert.equal(badJson.code, 1);
  assert.equal(JSON.parse(badJson.stdout).usable, false);
});

test("an engine error in --json mode prints {error} on stdout and error/hint lines on stderr", async () => {
  const engine = new FakeEngine();
  engine.listSandboxes = async () => {
    throw new NotFoundError('Thing "x" not found', { hint: "Make one first" });
  };
  const r = await cli(["ls", "--json"], { engine });
  assert.equal(r.code, 1);
  assert.deepEqual(ErrorJson.parse(JSON.parse(r.stdout)), { error: { code: "NOT_FOUND", message: 'Thing "x" not found', hint: "Make one first" } });
  assert.equal(r.stderr, 'error: Thing "x" not found\nhint: Make one first\n');
});

test("error text from the engine is printed with control characters escaped", async () => {
  const engine = new FakeEngine();
  engine.listSandboxes = async () => {
    throw new NotFoundError("bad \x1b]0;title\x07 name");
  };
  const r = await cli(["ls"], { engine });
  assert.equal(r.stderr, "error: bad \\x1b]0;title\\x07 name\n");
});

test("every command closes the engine it opened, on success and on failure", async () => {
  for (const argv of [["ls"], ["doctor"], ["image", "ls"], ["kill", "sbx_zzzzzzzzzzzzzzzzzzzz"]]) {
    const engine = new FakeEngine();
    await cli(argv, { engine });
    assert.ok(engine.closed, argv.join(" "));
  }
});
