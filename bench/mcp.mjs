// MCP round trip: one `run_code` tool call of `mvmctl mcp` (stdio, the MCP SDK's own Client)
// against the native SDK's `commands.run` of the same program on the same sandbox, interleaved in
// the same run, both through one daemon in its own process (namespace backend).
//   mcpRunCode.python  run_code {language: "python", code: "print(1)"} vs commands.run(["python3", "-"], {stdin})
//   mcpRunCode.shell   run_code {language: "shell", code: "true"}      vs commands.run(["/bin/sh", "-s"], {stdin})
// Target: ratioP50 <= 1.3 (issue 16).
import { performance } from "node:perf_hooks";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { Sandbox } from "@mvm/sdk";
import { MVMCTL, startBenchDaemon } from "./_daemon.mjs";

export async function benchMcp({ log, summary, ratio, imagesDir, image, runs }) {
  const daemon = await startBenchDaemon({
    prefix: "mvm-bench-mcp-",
    imagesDir,
    files: { "mcp.json": JSON.stringify({ images: [image], backend: "namespace", outputBudgetBytes: 16384 }) },
    extraEnv: (dir) => ({ MVM_MCP_CONFIG: `${dir}/mcp.json` }),
  });
  const { env, socketPath } = daemon;
  let client;
  let native;
  try {
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
    await daemon.stop();
  }
}
