/** SandboxLifetime.setTtl: the TTL moves from now, in every pause state, on fake timers. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { MAX_PAUSED_SECONDS } from "@mvm/protocol";
import { SandboxLifetime } from "./sandbox-lifetime.js";

function lifetime(onTtl: "kill" | "pause" = "kill"): { life: SandboxLifetime; fired: string[] } {
  const fired: string[] = [];
  const now = Date.now();
  const life = new SandboxLifetime(now, now + 60_000, onTtl, { expire: () => fired.push("expire"), pauseAtTtl: () => fired.push("pauseAtTtl") });
  return { life, fired };
}

describe("SandboxLifetime.setTtl", () => {
  it("extends and shortens a running TTL from now", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
    const { life, fired } = lifetime();
    life.setTtl(120_000);
    assert.equal(life.expiresAt, 1_000_000 + 120_000);
    t.mock.timers.tick(60_000);
    assert.deepEqual(fired, []);
    life.setTtl(5_000);
    assert.equal(life.expiresAt, 1_060_000 + 5_000);
    t.mock.timers.tick(4_999);
    assert.deepEqual(fired, []);
    t.mock.timers.tick(1);
    assert.deepEqual(fired, ["expire"]);
    life.end();
  });

  it("sets the time left of a frozen pause, and the kill of a running one", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 0 });
    const { life, fired } = lifetime();
    life.paused("frozen");
    life.setTtl(10_000);
    assert.equal(life.pause?.remainingSeconds, 10);
    t.mock.timers.tick(3_600_000);
    assert.deepEqual(fired, []);
    life.resumed();
    assert.equal(life.expiresAt, 3_600_000 + 10_000);
    life.paused("running");
    life.setTtl(20_000);
    assert.equal(life.pause?.killAt, 3_600_000 + 20_000);
    t.mock.timers.tick(20_000);
    assert.deepEqual(fired, ["expire"]);
    life.end();
  });

  it("under onTtl pause, a spent pause's resume grants the TTL last set", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 0 });
    const { life, fired } = lifetime("pause");
    t.mock.timers.tick(60_000);
    assert.deepEqual(fired, ["pauseAtTtl"]);
    life.paused("spent");
    assert.equal(life.pause?.killAt, 60_000 + MAX_PAUSED_SECONDS * 1000);
    life.setTtl(7_000);
    life.resumed();
    assert.equal(life.expiresAt, 60_000 + 7_000);
    life.end();
  });
});
