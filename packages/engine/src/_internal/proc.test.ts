import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import {
  isSameLiveProcess,
  killIfSame,
  listProcessesWithId,
  parseProcStat,
  readProcStartTime,
  readProcUid,
  sendSignal,
  waitForExit,
} from "./proc.js";

const isRoot = process.getuid?.() === 0;

test("parseProcStat finds the fields after a command name with spaces and parentheses", () => {
  const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
  fields[0] = "S";
  fields[1] = "77"; // ppid
  fields[2] = "78"; // pgrp
  fields[19] = "123456"; // starttime (field 22)
  const stat = parseProcStat(`4242 (we ird) (x) ${fields.join(" ")}\n`);
  assert.deepEqual(stat, { pid: 4242, state: "S", ppid: 77, pgrp: 78, startTime: "123456" });
  assert.equal(parseProcStat("garbage"), undefined);
  assert.equal(parseProcStat("12 (x) S 1 2"), undefined);
});

test("start times identify a process; a reaped or different process does not match", async () => {
  const own = await readProcStartTime(process.pid);
  assert.match(own ?? "", /^\d+$/);
  const child = spawn("/bin/sleep", ["60"], { stdio: "ignore" });
  await once(child, "spawn");
  const pid = child.pid ?? 0;
  const start = (await readProcStartTime(pid)) ?? "";
  assert.equal(await isSameLiveProcess(pid, start), true);
  assert.equal(await isSameLiveProcess(pid, `${start}0`), false);

  assert.equal(await killIfSame(pid, `${start}0`), false, "a wrong start time must not be killed");
  assert.equal(await isSameLiveProcess(pid, start), true);
  assert.equal(await killIfSame(pid, start), true);
  await once(child, "exit");
  assert.equal(await isSameLiveProcess(pid, start), false);
  assert.equal(await waitForExit(pid, start, 1_000), true);
  assert.equal(await readProcStartTime(999_999_999), undefined);
  assert.equal(sendSignal(pid, "SIGKILL"), false);
});

test("listProcessesWithId finds processes by uid", { skip: !isRoot && "needs root to start a process as another uid" }, async () => {
  const uid = 0x6f00_0000 + (process.pid % 1000);
  const child = spawn("/usr/bin/setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "/bin/sh", "-c", "echo ready; exec sleep 60"], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  await once(child.stdout, "data"); // printed after the uid switch
  try {
    assert.equal(await readProcUid(child.pid ?? 0), uid);
    assert.deepEqual(await listProcessesWithId(uid), [child.pid]);
  } finally {
    child.kill("SIGKILL");
    await once(child, "exit");
  }
  assert.deepEqual(await listProcessesWithId(uid), []);
});
