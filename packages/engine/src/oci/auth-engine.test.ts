/**
 * Registry credentials end to end through the engine: the credentials file in each engine's
 * state directory (mode 0600) lets it pull an OCI image and push and pull an image bundle on a
 * docker-registry that requires HTTP basic; without the file the same calls fail, and nothing of
 * the credentials reaches the audit log.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bcrypt } from "hash-wasm";
import { TransportError, type EngineApi } from "@mvm/protocol";
import { openEngine } from "../open.js";
import { auditFilePath } from "../audit/log.js";
import { REGISTRY_AUTH_FILE } from "./auth.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "./_test/registry.js";
import { SKOPEO, toolSkipReason, UMOCI, writeUmociLayout } from "../images/oci/_fixture.js";

const USER = "carol";
const PASSWORD = "pw-" + randomBytes(8).toString("hex");
const skip = toolSkipReason(UMOCI, SKOPEO) ?? registrySkipReason();

describe("the engine reaches a registry that requires credentials through its credentials file", { skip }, () => {
  let dir: string;
  let reg: TestRegistry;
  let host: string;
  const engines: EngineApi[] = [];

  async function engineWith(name: string, credentials: boolean): Promise<EngineApi> {
    const stateDir = join(dir, name, "state");
    await mkdir(stateDir, { recursive: true });
    if (credentials) {
      const auth = { auths: { [host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString("base64") } } };
      await writeFile(join(stateDir, REGISTRY_AUTH_FILE), JSON.stringify(auth), { mode: 0o600 });
    }
    const engine = await openEngine({ stateDir, imagesDir: join(dir, name, "images") });
    engines.push(engine);
    return engine;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "mvm-auth-engine-"));
    await chmod(dir, 0o755);
    const hash = await bcrypt({ password: PASSWORD, salt: randomBytes(16), costFactor: 5 });
    reg = await startRegistry({ auth: { htpasswd: `${USER}:${hash}\n` } });
    host = reg.origin.replace(/^http:\/\//, "");
    const layout = await writeUmociLayout(dir);
    execFileSync(SKOPEO, ["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", `${USER}:${PASSWORD}`, `oci:${layout}:t1`, `docker://${host}/t/bb:1`], { stdio: "pipe" });
  });
  after(async () => {
    for (const e of engines) await e.close();
    await reg?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("pulls an image, pushes it as a bundle and pulls the bundle on another engine; without credentials each is refused", async () => {
    const anonymous = await engineWith("anon", false);
    await assert.rejects(anonymous.pullImage(`${host}/t/bb:1`), (e: unknown) => e instanceof TransportError && /401/.test(e.message));
    const a = await engineWith("a", true);
    const image = await a.pullImage(`${host}/t/bb:1`);
    assert.match(image.oci?.reference ?? "", /@sha256:/);
    const pushed = await a.pushBundle({ source: image.digest, destination: `oci+http://${host}/t/bundles:v1` });
    await assert.rejects(anonymous.pullBundle({ source: pushed.uri }), TransportError);
    const b = await engineWith("b", true);
    const pulled = await b.pullBundle({ source: pushed.uri });
    assert.equal(pulled.image.digest, image.digest);
    for (const name of ["a", "b", "anon"]) {
      const log = await readFile(auditFilePath(join(dir, name, "state")), "utf8").catch(() => "");
      assert.ok(!log.includes(PASSWORD) && !log.includes(Buffer.from(`${USER}:${PASSWORD}`).toString("base64")), `no credentials in ${name}'s audit log`);
    }
  });
});
