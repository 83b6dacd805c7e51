/**
 * SDK parity features against the real engine (namespace backend), each embedded and through a
 * daemon: directory and multi-file transfer, setTimeout, publishPort and getHost, files.watch,
 * the named sandbox user, logs.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, tarEnd, tarHeader, tarPadding } from "@mvm/protocol";
import { Sandbox } from "./sandbox.js";
import { IMAGE, openRealEngines, skipWithoutImage, type RealEngines } from "./_test/real-engines.js";

let engines: RealEngines | undefined;
let local = "";

describe("parity on the real engine", { skip: skipWithoutImage, timeout: 600_000 }, () => {
  before(async () => {
    local = mkdtempSync(join(tmpdir(), "mvm-parity-local-"));
    engines = await openRealEngines("mvm-parity-");
  });
  after(async () => {
    await engines?.close();
    if (local !== "") rmSync(local, { recursive: true, force: true });
  });

  for (const name of ["embedded", "daemon"] as const) {
    const engineOf = () => {
      const t = engines?.transports.find((x) => x.name === name);
      assert.ok(t);
      return t.engine;
    };
    const sh = async (sb: Sandbox, script: string): Promise<string> => (await sb.commands.run(["sh", "-c", script])).stdout;

    it(`${name}: writeMany, uploadDir, downloadDir, readTar and writeTar`, async () => {
      await using sb = await Sandbox.create({ engine: engineOf(), image: IMAGE, backend: "namespace", ttlSeconds: 300 });

      const many = await sb.files.writeMany([
        { path: "/work/m/a.txt", data: "alpha" },
        { path: "/work/m/deep/b.bin", data: new Uint8Array([0, 1, 2, 255]) },
        { path: "/work/m/run.sh", data: "#!/bin/sh\necho ran\n", mode: 0o755 },
      ]);
      assert.deepEqual(many, { files: 3, dirs: 0, bytes: 5 + 4 + 19, skipped: 0 });
      assert.equal(await sh(sb, "cat /work/m/a.txt; od -An -tu1 /work/m/deep/b.bin | tr -s ' '; /work/m/run.sh"), "alpha 0 1 2 255\nran\n");
      await assert.rejects(sb.files.writeMany([{ path: "work/rel", data: "x" }]), InvalidArgumentError);
      await assert.rejects(sb.files.writeMany([{ path: "/work/../etc/x", data: "x" }]), InvalidArgumentError);

      const src = join(local, `${name}-src`);
      mkdirSync(join(src, "sub", "deeper"), { recursive: true });
      writeFileSync(join(src, "top.txt"), "top");
      writeFileSync(join(src, "sub", "deeper", "big.bin"), Buffer.alloc(300_000, 7));
      writeFileSync(join(src, "long-" + "n".repeat(150)), "long name");
      symlinkSync("/etc/passwd", join(src, "link"));
      const up = await sb.files.uploadDir(src, "/work/up");
      assert.deepEqual(up, { files: 3, dirs: 2, bytes: 3 + 300_000 + 9, skipped: 0 });
      assert.equal(await sh(sb, "cat /work/up/top.txt; wc -c < /work/up/sub/deeper/big.bin; test -e /work/up/link || echo nolink"), "top300000\nnolink\n");

      await sh(sb, "mkdir -p /work/out/d && echo guest > /work/out/d/g.txt && ln -s /etc/shadow /work/out/evil && printf x > /work/out/x");
      const dest = join(local, `${name}-dest`);
      const down = await sb.files.downloadDir("/work/out", dest);
      assert.deepEqual(down, { files: 2, dirs: 1, bytes: 7, skipped: 0 });
      assert.equal(readFileSync(join(dest, "d", "g.txt"), "utf8"), "guest\n");
      assert.deepEqual(readdirSync(dest).sort(), ["d", "x"]);

      const roundTrip = join(local, `${name}-round`);
      await sb.files.downloadDir("/work/up", roundTrip);
      assert.equal(statSync(join(roundTrip, "sub", "deeper", "big.bin")).size, 300_000);
      assert.equal(readFileSync(join(roundTrip, "long-" + "n".repeat(150)), "utf8"), "long name");

      const stream = await sb.files.readTar("/work/m");
      let bytes = 0;
      for await (const chunk of stream) bytes += chunk.byteLength;
      assert.ok(bytes > 1024 && bytes % 512 === 0, String(bytes));

      await assert.rejects(sb.files.readTar("/work/none"), NotFoundError);
      await assert.rejects(sb.files.readTar("/work/m/a.txt"), InvalidArgumentError);
      const hostile = Buffer.concat([tarHeader({ path: "ok.txt", type: "file", mode: 0o644, size: 1, mtimeMs: 0 }), Buffer.from("x"), tarPadding(1)]);
      const evil = Buffer.from(hostile);
      evil.write("../escape.txt\0", 0); // re-checksummed below
      let sum = 0;
      evil.fill(0x20, 148, 156);
      for (let i = 0; i < 512; i++) sum += evil[i]!;
      evil.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
      await assert.rejects(sb.files.writeTar("/work/h", Buffer.concat([evil, tarEnd()])), (err: unknown) => err instanceof InvalidArgumentError && /\.\./.test(err.message));
      await assert.rejects(sb.files.writeTar("/work/h", hostile), (err: unknown) => err instanceof InvalidArgumentError && /truncated/.test(err.message));
      assert.equal(await sh(sb, "test -e /work/escape.txt && echo escaped || echo contained"), "contained\n");
      await assert.rejects(sb.files.writeTar("/work/lim", Buffer.concat([hostile, tarEnd()]), { maxBytes: 0 }), /more than 0 bytes/);
      assert.ok(!existsSync(join(local, "escape.txt")));
    });

    it(`${name}: publishPort on a live sandbox, and getHost`, async () => {
      await using sb = await Sandbox.create({ engine: engineOf(), image: IMAGE, backend: "namespace", ttlSeconds: 300 });
      await assert.rejects(sb.getHost(8000), NotFoundError);
      const server = await sb.commands.start(["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/work"]);
      await sb.files.write("/work/hello.txt", "hello from the guest");
      const host = await sb.publishPort(8000);
      assert.match(host, /^127\.0\.0\.1:[0-9]+$/);
      assert.equal(await sb.getHost(8000), host);
      assert.equal(await sb.publishPort(8000), host);
      const taken = Number(host.split(":")[1]) === 1 ? 2 : 1;
      await assert.rejects(sb.publishPort(8000, { hostPort: taken }), AlreadyExistsError);
      let body = "";
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        // Each try is bounded: a slow first answer under load is retried, never waited on for good.
        body = await fetch(`http://${host}/hello.txt`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.text(), () => "");
        if (body !== "") break;
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(body, "hello from the guest");
      await server.kill();
    });

    it(`${name}: files.watch reports changes, bounds its queue and stops its watcher`, async () => {
      await using sb = await Sandbox.create({ engine: engineOf(), image: IMAGE, backend: "namespace", ttlSeconds: 300 });
      await sb.files.mkdir("/work/w/sub");
      await assert.rejects(sb.files.watch("/work/none"), NotFoundError);
      await assert.rejects(sb.files.watch("/work/w/../x"), InvalidArgumentError);
      {
        await using watcher = await sb.files.watch("/work/w", { recursive: true });
        await sb.files.write("/work/w/sub/a.txt", "a");
        await sh(sb, "rm /work/w/sub/a.txt");
        const seen: string[] = [];
        for await (const e of watcher) {
          if (e.type === "overflow") continue;
          seen.push(`${e.type} ${e.path}`);
          if (e.type === "remove" && e.path === "/work/w/sub/a.txt") break;
        }
        assert.ok(seen.includes("create /work/w/sub/a.txt"), seen.join("\n"));
        assert.equal(seen.at(-1), "remove /work/w/sub/a.txt");
      }
      const procs = async (): Promise<number> => (await sb.commands.list()).filter((p) => p.argv.includes("/.mvm/bin/node")).length;
      assert.equal(await procs(), 0);

      await using small = await sb.files.watch("/work/w", { maxQueuedEvents: 2 });
      await sh(sb, "for i in $(seq 1 40); do : > /work/w/f$i; done");
      const deadline = Date.now() + 20_000;
      while (small.dropped === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const got: string[] = [];
      for await (const e of small) {
        got.push(e.type === "overflow" ? `overflow ${e.dropped > 0}` : e.type);
        if (got.length === 3) break;
      }
      assert.deepEqual(got, ["create", "create", "overflow true"]);
    });

    it(`${name}: the workload has a name, a home and a shell`, async () => {
      await using sb = await Sandbox.create({ engine: engineOf(), image: IMAGE, backend: "namespace", ttlSeconds: 300 });
      const out = await sh(
        sb,
        'whoami; id -un; id -gn; echo "$HOME"; python3 -c "import getpass, os; print(getpass.getuser(), os.path.expanduser(\'~\'))"; ' +
          "mkdir -p ~/.local/lib && touch ~/.local/lib/x && echo writable; getent passwd user | cut -d: -f6,7",
      );
      assert.equal(out, "user\nuser\nuser\n/home/user\nuser /home/user\nwritable\n/home/user:/bin/bash\n");
      const site = await sb.commands.run(["python3", "-c", "import site; print(site.getusersitepackages())"]);
      assert.match(site.stdout, /^\/home\/user\/\.local\/lib\/python3/);
    });

    it(`${name}: logs holds the agent's log and the workload's output, secret values replaced`, async () => {
      const engine = engineOf();
      await engine.setSecret(`parity-${name}`, `s3cr3t-${name}-value`, { hosts: ["parity.test"] });
      await using sb = await Sandbox.create({
        engine,
        image: IMAGE,
        backend: "namespace",
        ttlSeconds: 300,
        secrets: { KEY: { kind: "secret-ref", source: "store", name: `parity-${name}`, posture: "env" } },
      });
      const bg = await sb.commands.start(["sh", "-c", 'echo "from the background $KEY"; echo to-stderr >&2'], { background: true });
      await bg.wait();
      const all = await sb.logs();
      const workload = all.lines.filter((l) => l.source === "workload");
      assert.ok(workload.some((l) => l.stream === "stdout" && /^from the background mvm-placeholder-/.test(l.text)), JSON.stringify(workload));
      assert.ok(workload.some((l) => l.stream === "stderr" && l.text === "to-stderr"));
      assert.ok(!JSON.stringify(all).includes(`s3cr3t-${name}-value`));
      const only = await sb.logs({ source: "workload", tail: 1 });
      assert.equal(only.lines.length, 1);
      assert.equal(only.truncated, true);
      assert.ok((await sb.logs({ source: "agent" })).lines.every((l) => l.source === "agent"));
      await engine.removeSecret(`parity-${name}`);
    });

    it(`${name}: setTimeout extends and shortens a live sandbox's TTL, within bounds`, async () => {
      const sb = await Sandbox.create({ engine: engineOf(), image: IMAGE, backend: "namespace", ttlSeconds: 60 });
      try {
        const before = Date.now();
        const longer = await sb.setTimeout(3600);
        assert.ok(Math.abs(Date.parse(longer.expiresAt) - (before + 3600_000)) < 5_000, longer.expiresAt);
        assert.equal((await sb.refresh()).expiresAt, longer.expiresAt);
        await assert.rejects(sb.setTimeout(0), InvalidArgumentError);
        await assert.rejects(sb.setTimeout(7 * 24 * 3600 + 1), InvalidArgumentError);
        await assert.rejects(sb.setTimeout(1.5), InvalidArgumentError);
        await sb.setTimeout(1);
        const deadline = Date.now() + 30_000;
        while ((await sb.refresh()).state !== "stopped" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        assert.equal((await sb.refresh()).state, "stopped");
      } finally {
        await sb.kill().catch(() => undefined);
      }
    });
  }
});
