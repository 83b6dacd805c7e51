// MCP round trip: one `run_code` tool call of `mvmctl mcp` (stdio, the MCP SDK's own Client)
// against the native SDK's `commands.run` of the same program on the same sandbox, interleaved in
// the same run, both through one daemon in its own process (namespace backend).
//   mcpRunCode.python  run_code {language: "python", code: "print(1)"} vs commands.run(["python3", "-"], {stdin})
//   mcpRunCode.shell   run_code {language: "shell", code: "true"}      vs commands.run(["/bin/sh", "-s"], {stdin})
// Target: ratioP50 <= 1.3 (issue 16).
import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { Sandbox } from "@mvm/sdk";

const MVMCTL = fileURLToPath(new URL("../packages/cli/bin/mvmctl.cjs", import.meta.url));

export async function benchMcp({ log, summary, ratio, imagesDir, image, runs }) {
  const dir = await mkdtemp(join(tmpdir(), "mvm-bench-mcp-"));
  await chmod(dir, 0o711);
  await mkdir(join(dir, "run"), { mode: 0o700 });
  const socketPath = join(dir, "run", "mvmd.sock");
  await writeFile(join(dir, "config.json"), "{}");
  await writeFile(join(dir, "mcp.json"), JSON.stringify({ images: [image], backend: "namespace", outputBudgetBytes: 16384 }));
  const env = {
    ...process.env,
    MVM_CONFIG: join(dir, "config.json"),
    MVM_STATE_DIR: join(dir, "state"),
    MVM_IMAGES_DIR: imagesDir,
    MVM_ACK_CONTAINER_TIER: "1",
    MVM_DEFAULT_BACKEND: "namespace",
    MVM_DAEMON_SOCKET: socketPath,
    MVM_MCP_CONFIG: join(dir, "mcp.json"),
  };
  const daemon = spawn(process.execPath, [MVMCTL, "daemon", "--socket", socketPath], { env, stdio: ["ignore", "ignore", "pipe"] });
  const daemonClosed = new Promise((resolve) => daemon.on("close", resolve));
  let client;
  let native;
  try {
    await new Promise((resolve, reject) => {
      let seen = "";
      daemon.stderr.on("data", (c) => {
        seen += c;
        if (seen.includes("listening on")) resolve();
      });
      daemon.once("close", () => reject(new Error(`bench daemon exited early: ${seen}`)));
    });
    client = new Client({ name: "mvm-bench", version: "1.0.0" });
    await client.connect(new StdioClientTransport({ command: process.execPath, args: [MVMCTL, "mcp"], env, stderr: "ignore" }));
    const created = await client.callTool({ name: "create_sandbox", arguments: {} });
    const id = /sandbox (\S+) is running/.exec(created.content[0].text)?.[1];
    if (!id) throw new Error(`create_sandbox: ${created.content[0].text}`);
    native = await Sandbox.connect(id, { mode: "daemon", socketPath });
    const out = {};
    for (const [name, language, code, argv] of [
      ["python", "python", "print(1)", ["python3", "-"]],
      ["shell", "shell", "true", ["/bin/sh", "-s"]],
    ]) {
      const mcp = [];
      const sdk = [];
      const once = async () => {
        let t0 = performance.now();
        const r = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language, code } });
        mcp.push(performance.now() - t0);
        if (r.isError) throw new Error(`run_code: ${r.content[0].text}`);
        t0 = performance.now();
        await native.commands.run(argv, { stdin: code });
        sdk.push(performance.now() - t0);
      };
      for (let i = 0; i < 3; i++) await once(); // warm-up, not counted
      mcp.length = 0;
      sdk.length = 0;
      for (let i = 0; i < runs; i++) await once();
      const m = summary(mcp);
      const s = summary(sdk);
      out[name] = {
        mcpMs: m,
        sdkMs: s,
        ratioP50: ratio(m.p50, s.p50),
        ratioP95: ratio(m.p95, s.p95),
        target: "ratioP50 <= 1.3",
        method: `run_code {language: "${language}", code: ${JSON.stringify(code)}} of mvmctl mcp over stdio (MCP SDK Client) against @mvm/sdk commands.run(${JSON.stringify(argv)}, {stdin}) on the same sandbox through the same daemon, alternating, ${runs} rounds after 3 warm-up rounds`,
      };
      log(`mcp ${name}: run_code p50 ${m.p50} ms, commands.run p50 ${s.p50} ms, ratio ${out[name].ratioP50}`);
    }
    return out;
  } finally {
    await client?.close().catch(() => {});
    daemon.kill("SIGTERM");
    await daemonClosed;
    await rm(dir, { recursive: true, force: true });
  }
}
