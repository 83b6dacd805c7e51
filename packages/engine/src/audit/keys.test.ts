import { spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { hostKeyPath, loadHostKey, loadOrCreateHostKey, parsePublicKey, publicKeyPem, publicKeyRaw } from "./keys.js";

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-audit-keys-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("host audit key", () => {
  it("is created once with mode 0600 in a 0700 directory, then loaded", async () => {
    const stateDir = join(root, "a");
    const first = await loadOrCreateHostKey(stateDir);
    assert.equal(first.path, hostKeyPath(stateDir));
    assert.equal((await stat(first.path)).mode & 0o777, 0o600);
    assert.equal((await stat(join(stateDir, "keys"))).mode & 0o777, 0o700);
    const again = await loadOrCreateHostKey(stateDir);
    assert.equal(publicKeyPem(again.publicKey), publicKeyPem(first.publicKey));
  });

  it("is the same key for processes racing to create it", async () => {
    const stateDir = join(root, "race");
    const moduleUrl = new URL("./keys.js", import.meta.url).href;
    const script = `const m = await import(${JSON.stringify(moduleUrl)}); const k = await m.loadOrCreateHostKey(${JSON.stringify(stateDir)}); process.stdout.write(m.publicKeyPem(k.publicKey));`;
    const outputs = await Promise.all(
      Array.from({ length: 6 }, () =>
        new Promise<string>((resolve, reject) => {
          const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
          let out = "";
          child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
          child.on("error", reject);
          child.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited ${code}`))));
        }),
      ),
    );
    const onDisk = publicKeyPem((await loadHostKey(hostKeyPath(stateDir))).publicKey);
    for (const pem of outputs) assert.equal(pem, onDisk);
  });

  it("is refused when group or others can read it", async () => {
    const stateDir = join(root, "loose");
    const key = await loadOrCreateHostKey(stateDir);
    await chmod(key.path, 0o640);
    await assert.rejects(loadOrCreateHostKey(stateDir), { code: "PERMISSION_DENIED" });
  });

  it("is refused when the file holds another kind of key", async () => {
    const stateDir = join(root, "rsa");
    await loadOrCreateHostKey(stateDir);
    const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" });
    await writeFile(hostKeyPath(stateDir), ec, { mode: 0o600 });
    await assert.rejects(loadOrCreateHostKey(stateDir), { code: "INVALID_ARGUMENT" });
  });

  it("exports a public key that parses back from PEM, hex and base64", async () => {
    const key = await loadOrCreateHostKey(join(root, "export"));
    const pem = publicKeyPem(key.publicKey);
    const raw = publicKeyRaw(key.publicKey);
    assert.equal(raw.length, 32);
    for (const text of [pem, raw.toString("hex"), raw.toString("base64"), await readFile(key.path, "utf8")]) {
      assert.equal(publicKeyPem(parsePublicKey(text)), pem);
    }
    assert.throws(() => parsePublicKey("not a key"), { code: "INVALID_ARGUMENT" });
    const ecPem = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "pem" }).toString();
    assert.throws(() => parsePublicKey(ecPem), { code: "INVALID_ARGUMENT" });
  });
});
