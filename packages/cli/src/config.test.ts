import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
import { MAX_CONFIG_BYTES, configLocation, loadConfig, parseConfig } from "./config.js";
import { scratchDir } from "./_test/scratch.js";

const dir = scratchDir("config");
function file(name: string, content: string): string {
  const p = join(dir, name);
  writeFileSync(p, content);
  return p;
}

test("config location: MVM_CONFIG, then /etc for root, then XDG or ~/.config", () => {
  assert.deepEqual(configLocation({ MVM_CONFIG: "/x/c.json" }, 0, "/root"), { path: "/x/c.json", explicit: true });
  assert.deepEqual(configLocation({}, 0, "/root"), { path: "/etc/mvm/config.json", explicit: false });
  assert.deepEqual(configLocation({}, 1000, "/home/u"), { path: "/home/u/.config/mvm/config.json", explicit: false });
  assert.deepEqual(configLocation({ XDG_CONFIG_HOME: "/xdg" }, 1000, "/home/u"), { path: "/xdg/mvm/config.json", explicit: false });
  // A relative XDG_CONFIG_HOME is ignored, as the XDG spec requires.
  assert.deepEqual(configLocation({ XDG_CONFIG_HOME: "rel" }, 1000, "/home/u"), { path: "/home/u/.config/mvm/config.json", explicit: false });
  assert.deepEqual(configLocation({ MVM_CONFIG: "" }, 1000, "/home/u"), { path: "/home/u/.config/mvm/config.json", explicit: false });
});

const VALID: unknown[] = [{}, { ackContainerTier: true }, { ackContainerTier: false }];
const INVALID: { value: unknown; message: RegExp }[] = [
  { value: { ackContainerTier: "yes" }, message: /: ackContainerTier: / },
  { value: { ackContainerTier: 1 }, message: /: ackContainerTier: / },
  { value: { ackContainerTeir: true }, message: /ackContainerTeir/ },
  { value: [], message: /^Invalid config file "\/c.json": / },
  { value: null, message: /^Invalid config file/ },
  { value: "ackContainerTier", message: /^Invalid config file/ },
];

for (const v of VALID) {
  test(`config accepted: ${JSON.stringify(v)}`, () => {
    assert.deepEqual(parseConfig(v, "/c.json"), v);
  });
}
for (const { value, message } of INVALID) {
  test(`config rejected: ${JSON.stringify(value)}`, () => {
    assert.throws(
      () => parseConfig(value, "/c.json"),
      (err: unknown) => err instanceof InvalidArgumentError && message.test(err.message) && err.hint !== undefined && err.cause !== undefined,
    );
  });
}

test("loadConfig reads and validates a file", async () => {
  assert.deepEqual(await loadConfig({ path: file("ok.json", '{"ackContainerTier": true}'), explicit: true }), { ackContainerTier: true });
  assert.deepEqual(await loadConfig({ path: file("group.json", '{"daemonGroup": "mvm"}'), explicit: true }), { daemonGroup: "mvm" });
  await assert.rejects(loadConfig({ path: file("bad.json", "{not json"), explicit: false }), /^InvalidArgumentError: Invalid config file ".*bad.json": not JSON$/);
  await assert.rejects(loadConfig({ path: file("extra.json", '{"ackContainerTier": true, "x": 1}'), explicit: false }), InvalidArgumentError);
  await assert.rejects(loadConfig({ path: file("big.json", " ".repeat(MAX_CONFIG_BYTES + 1)), explicit: false }), /larger than 65536 bytes/);
});

test("a missing file is no settings at a default location, an error when MVM_CONFIG names it", async () => {
  const missing = join(dir, "absent.json");
  assert.deepEqual(await loadConfig({ path: missing, explicit: false }), {});
  await assert.rejects(loadConfig({ path: missing, explicit: true }), (err: unknown) => err instanceof InvalidArgumentError && /Cannot read config file/.test(err.message));
});

test("a FIFO or a directory at the config path fails instead of hanging", async () => {
  const fifo = join(dir, "fifo.json");
  execFileSync("mkfifo", [fifo]);
  await assert.rejects(loadConfig({ path: fifo, explicit: false }), InvalidArgumentError);
  await assert.rejects(loadConfig({ path: dir, explicit: false }), InvalidArgumentError);
});
