/**
 * The example from the README and the issue, run as written against the real engine (embedded
 * mode, namespace backend, the default image built by scripts/setup.sh).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { Sandbox } from "./index.js";

// The README's create names no backend and asks for pids and cpus limits, which only the
// namespace backend enforces; on a host where the vm backend works it would be the default.
// This process's embedded engine therefore defaults to namespace (an outside daemon is not affected),
// and this process, as the caller, acknowledges the container tier that default lands on.
process.env["MVM_DEFAULT_BACKEND"] = "namespace";
process.env["MVM_ACK_CONTAINER_TIER"] = "1";

function defaultImagePresent(): boolean {
  const refs = "/var/lib/mvm/images/refs.json";
  return existsSync(refs) && readFileSync(refs, "utf8").includes('"debian:bookworm+python3"');
}

test(
  "README example runs as written",
  { skip: defaultImagePresent() ? false : "needs the default image in /var/lib/mvm: run scripts/setup.sh" },
  async () => {
    let id: string;
    {
      await using sb = await Sandbox.create({ image: "debian:bookworm+python3", ttlSeconds: 600, resources: { memoryMiB: 512, pids: 256, cpus: 1 } });
      id = sb.id;
      const r = await sb.commands.run(["python3", "-c", "print(2+2)"], { timeoutSeconds: 30 });
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout, "4\n");
      assert.equal(r.stderr, "");
      assert.equal(r.receipt.sandboxId, sb.id);
      const p = await sb.commands.start(["sleep", "100"]);
      await p.kill();
      await sb.files.write("/work/a.txt", "hi");
      assert.equal(await sb.files.read("/work/a.txt"), "hi");
      const again = await Sandbox.connect(sb.id);
      assert.equal(again.id, sb.id);
      const all = await Sandbox.list();
      assert.ok(all.some((s) => s.id === sb.id));
    }
    // `await using` killed it on scope exit.
    const after = await Sandbox.connect(id).catch((err: unknown) => err);
    if (after instanceof Sandbox) assert.equal(after.info.state, "stopped");
    else assert.equal((after as { code?: string }).code, "NOT_FOUND");
  },
);
