import { test } from "node:test";
import assert from "node:assert/strict";
import { SANDBOX_UID_BASE, SANDBOX_UID_SPAN, SandboxUidAllocator, hostUidSources, namedIds, subordinateRanges, type UidSources } from "./uid.js";

/** Sources whose random numbers come from a fixed list. */
function sources(randoms: number[], overrides: Partial<UidSources> = {}): UidSources {
  const queue = [...randoms];
  return {
    idFiles: async () => [],
    rangeFiles: async () => [],
    inUse: async () => false,
    random: () => {
      const next = queue.shift();
      if (next === undefined) throw new Error("out of random numbers");
      return next;
    },
    ...overrides,
  };
}

test("namedIds and subordinateRanges read passwd-style and subuid-style files", () => {
  assert.deepEqual([...namedIds(["root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n# comment\n", "grp:x:42:\n"])], [0, 1000, 42]);
  assert.deepEqual(subordinateRanges(["bob:100000:65536\nalice:1879048192:10\n"]), [
    [100000, 165536],
    [1879048192, 1879048202],
  ]);
});

test("allocate skips ids named in passwd or group, inside a subordinate range, held, or used by a process", async () => {
  const named = SANDBOX_UID_BASE + 1;
  const busy = SANDBOX_UID_BASE + 9;
  const allocator = new SandboxUidAllocator(
    // 1: named in passwd, 5: in bob's subordinate range, 9: in use, 12: free; then 12 again (held), 13.
    sources([1, 5, 9, 12, 12, 13], {
      idFiles: async () => [`svc:x:${named}:${named}::/:/bin/false\n`],
      rangeFiles: async () => [`bob:${SANDBOX_UID_BASE + 4}:3\n`],
      inUse: async (id) => id === busy,
    }),
  );
  assert.equal(await allocator.allocate(), SANDBOX_UID_BASE + 12);
  assert.equal(await allocator.allocate(), SANDBOX_UID_BASE + 13, "a held id is not handed out twice");
  allocator.release(SANDBOX_UID_BASE + 12);
});

test("allocate gives up with an error when every try collides", async () => {
  const allocator = new SandboxUidAllocator(sources(Array.from({ length: 64 }, () => 0), { inUse: async () => true }));
  await assert.rejects(allocator.allocate(), /Cannot find a free sandbox uid/);
});

test("the host allocator returns ids in the sandbox range that no process uses", async () => {
  const allocator = new SandboxUidAllocator(hostUidSources);
  const ids = await Promise.all([allocator.allocate(), allocator.allocate(), allocator.allocate()]);
  assert.equal(new Set(ids).size, 3);
  for (const id of ids) {
    assert.ok(id >= SANDBOX_UID_BASE && id < SANDBOX_UID_BASE + SANDBOX_UID_SPAN, String(id));
    assert.equal(await hostUidSources.inUse(id), false);
  }
});
