/** lenientSchema: unknown answer fields are dropped at any depth; known fields keep their rules. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ExecEvent, SandboxInfo } from "./api.js";
import { lenientSchema } from "./lenient.js";

const INFO = {
  id: "sbx_abcdefghijklmnopqrst",
  state: "running",
  backend: "namespace",
  tier: "container",
  image: { ref: "debian:bookworm", digest: `sha256:${"a".repeat(64)}` },
  createdAt: "2026-01-01T00:00:00.000Z",
  expiresAt: "2026-01-01T01:00:00.000Z",
  resources: {},
  workMiB: 512,
  labels: {},
};

test("fields a newer daemon adds, at the top and nested, are accepted and dropped", () => {
  const newer = { ...INFO, addedLater: { x: 1 }, image: { ...INFO.image, platform: "linux/amd64" } };
  assert.equal(SandboxInfo.safeParse(newer).success, false);
  const parsed = lenientSchema(SandboxInfo).parse(newer);
  assert.deepEqual(parsed, INFO);
});

test("a missing or mistyped known field still fails", () => {
  const { workMiB: _, ...missing } = INFO;
  assert.equal(lenientSchema(SandboxInfo).safeParse(missing).success, false);
  assert.equal(lenientSchema(SandboxInfo).safeParse({ ...INFO, workMiB: "512" }).success, false);
  assert.equal(lenientSchema(SandboxInfo).safeParse({ ...INFO, id: "sbx_NOT_AN_ID" }).success, false);
});

test("discriminated unions keep their discriminator and accept new fields in a member", () => {
  const schema = lenientSchema(ExecEvent);
  assert.deepEqual(schema.parse({ type: "started", proc: 1, pid: 2, cgroup: "x" }), { type: "started", proc: 1, pid: 2 });
  assert.equal(schema.safeParse({ type: "novel" }).success, false);
  assert.equal(schema.safeParse({ type: "stdout", data: 1 }).success, false);
});

test("refinements and bounds survive", () => {
  const refined = z.strictObject({ a: z.number().max(3) }).refine((v) => v.a !== 2, "not two");
  const lenient = lenientSchema(refined);
  assert.equal(lenient.safeParse({ a: 2, b: 1 }).success, false);
  assert.equal(lenient.safeParse({ a: 4 }).success, false);
  assert.deepEqual(lenient.parse({ a: 1, b: 1 }), { a: 1 });
  assert.equal(lenientSchema(refined), lenient);
});

