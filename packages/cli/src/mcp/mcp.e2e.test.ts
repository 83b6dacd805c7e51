/**
 * End to end: the MCP SDK's own Client drives the shipped `mvmctl mcp` over stdio and over
 * streamable HTTP, against a daemon on the namespace backend: every tool, the output budget,
 * progress notifications, a config that tool arguments can only narrow, the bearer token, and the
 * end of a session killing the sandboxes it did not keep.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { DaemonClient } from "@mvm/sdk";
import { DEFAULT_IMAGE } from "@mvm/engine";
import { MVMCTL, cliEnv, skipWithoutImages, startDaemon, type TestDaemon } from "../_test/e2e-env.js";
import { scratchDir } from "../_test/scratch.js";

const TOKEN = "t".repeat(20) + "0123456789abcdef0123";
const RULES = [
  { kind: "https", host: "api.example.com" },
  { kind: "tcp", host: "db.example.com", port: 5432 },
] as const;

function textOf(r: unknown): string {
  const content = (r as CallToolResult).content;
  return content.map((c) => (c.type === "text" ? c.text : "")).join("");
}

function idOf(r: unknown): string {
  const id = /sandbox (\S+) is running/.exec(textOf(r))?.[1];
  assert.ok(id, textOf(r));
  return id;
}

describe("mvmctl mcp", { skip: skipWithoutImages, timeout: 600_000 }, () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let daemon: TestDaemon;
  let engine: DaemonClient;

  before(async () => {
    dir = scratchDir("mvm-mcp");
    // The sandbox's uid must be able to pass through the state directory's parents.
    chmodSync(dirname(dir), 0o711);
    chmodSync(dir, 0o711);
    env = cliEnv(dir);
    const config = join(dir, "mcp.json");
    writeFileSync(
      config,
      JSON.stringify({
        images: [DEFAULT_IMAGE],
        network: { version: 1, default: "deny", rules: RULES },
        secrets: { OPENAI_API_KEY: { kind: "secret-ref", source: "store", name: "openai-api-key", posture: "mediated", hosts: ["api.example.com"] } },
        backend: "namespace",
        ttlSeconds: { default: 300, max: 900 },
        outputBudgetBytes: 2048,
        maxCommandSeconds: 120,
      }),
    );
    env.MVM_MCP_CONFIG = config;
    const run = join(dir, "run");
    mkdirSync(run, { mode: 0o700 });
    const socketPath = join(run, "mvmd.sock");
    env.MVM_DAEMON_SOCKET = socketPath;
    daemon = await startDaemon(env, socketPath);
    engine = new DaemonClient({ socketPath });
  });

  after(async () => {
    await engine?.close();
    await daemon?.stop();
  });

  async function stdioClient(): Promise<{ client: Client; transport: StdioClientTransport }> {
    const transport = new StdioClientTransport({ command: process.execPath, args: [MVMCTL, "mcp"], env: env as Record<string, string>, stderr: "ignore" });
    const client = new Client({ name: "mvm-test", version: "1.0.0" });
    await client.connect(transport);
    return { client, transport };
  }

  test("over stdio: every tool, budget, progress, narrowing, strict arguments, end of session", { timeout: 240_000 }, async () => {
    const { client, transport } = await stdioClient();
    const exited = new Promise<void>((resolve) => {
      const pid = transport.pid;
      assert.ok(pid);
      const timer = setInterval(() => {
        try {
          process.kill(pid, 0);
        } catch {
          clearInterval(timer);
          resolve();
        }
      }, 50);
    });
    const tools = (await client.listTools()).tools.map((t) => t.name).sort();
    assert.deepEqual(tools, ["create_sandbox", "exec", "kill_sandbox", "list_sandboxes", "read_file", "run_code", "write_file"]);
    const create = (await client.listTools()).tools.find((t) => t.name === "create_sandbox");
    assert.equal((create?.inputSchema as { additionalProperties?: unknown }).additionalProperties, false);

    const createProgress: string[] = [];
    const created = await client.callTool({ name: "create_sandbox", arguments: { network: [RULES[0]] } }, undefined, {
      onprogress: (p) => createProgress.push(p.message ?? ""),
    });
    assert.notEqual(created.isError, true, textOf(created));
    const id = idOf(created);
    assert.ok(createProgress.length >= 1, "create reports progress");
    // Narrowed: only the one rule asked for, and no secret unless asked.
    const info = await engine.getSandbox(id);
    assert.deepEqual(info.network?.policy.rules, [RULES[0]]);
    assert.deepEqual(info.secrets ?? [], []);

    const py = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language: "python", code: "import sys\nprint(6*7)\nprint('oops', file=sys.stderr)" } });
    assert.notEqual(py.isError, true, textOf(py));
    assert.match(textOf(py), /exit code 0/);
    assert.match(textOf(py), /--- stdout ---\n42\n/);
    assert.match(textOf(py), /--- stderr ---\noops\n/);
    const js = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language: "javascript", code: "console.log([1,2,3].map((x) => x * 2).join(','))" } });
    assert.match(textOf(js), /2,4,6/, textOf(js));
    const sh = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language: "shell", code: "echo $((3+4)); exit 3" } });
    assert.equal(sh.isError, true);
    assert.match(textOf(sh), /exit code 3[^]*7\n/);

    const ex = await client.callTool({ name: "exec", arguments: { sandboxId: id, argv: ["sh", "-c", "pwd; cat"], stdin: "from stdin", cwd: "/tmp" } });
    assert.match(textOf(ex), /\/tmp\nfrom stdin/, textOf(ex));

    const wrote = await client.callTool({ name: "write_file", arguments: { sandboxId: id, path: "/work/dir/a.txt", content: "hello MCP", createParents: true } });
    assert.match(textOf(wrote), /wrote 9 bytes/, textOf(wrote));
    const read = await client.callTool({ name: "read_file", arguments: { sandboxId: id, path: "/work/dir/a.txt" } });
    assert.equal(textOf(read), "hello MCP");
    const missing = await client.callTool({ name: "read_file", arguments: { sandboxId: id, path: "/work/none" } });
    assert.equal(missing.isError, true);
    assert.match(textOf(missing), /^NOT_FOUND: /);

    // Budget: the config's 2048 bytes, narrowed to 300 by the argument; head and tail kept, the cut said.
    const big = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language: "python", code: "print('A' * 50000 + 'END')", maxOutputBytes: 300 } });
    const bigText = textOf(big);
    assert.match(bigText, /\[mvm: 49704 of 50004 bytes of stdout cut here to fit the output budget\]/, bigText);
    assert.match(bigText, /END\n$/);
    assert.ok(bigText.length < 600, `${bigText.length} chars`);
    const wide = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language: "python", code: "print('B' * 10000)", maxOutputBytes: 1_000_000 } });
    assert.match(textOf(wide), /cut here/, "the argument cannot raise the operator's budget");
    const bigFile = await client.callTool({ name: "exec", arguments: { sandboxId: id, argv: ["python3", "-c", "open('/work/big.txt','w').write('x'*100000)"] } });
    assert.notEqual(bigFile.isError, true, textOf(bigFile));
    assert.match(textOf(await client.callTool({ name: "read_file", arguments: { sandboxId: id, path: "/work/big.txt" } })), /97952 of 100000 bytes of \/work\/big.txt cut/);

    // Progress while a command runs.
    const progress: string[] = [];
    const slow = await client.callTool(
      { name: "run_code", arguments: { sandboxId: id, language: "shell", code: "for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done" } },
      undefined,
      { onprogress: (p) => progress.push(p.message ?? "") },
    );
    assert.match(textOf(slow), /tick 5/);
    assert.ok(progress.some((m) => m.startsWith("running:")), progress.join("|"));

    // The config can only be narrowed.
    const refusals: Array<[Record<string, unknown>, RegExp]> = [
      [{ image: "debian:bookworm" }, /POLICY_DENIED: Image "debian:bookworm" is not allowed/],
      [{ network: [{ kind: "https", host: "evil.example.net" }] }, /POLICY_DENIED: Network rule .*evil\.example\.net/],
      [{ network: [{ kind: "https", host: "*.example.com" }] }, /POLICY_DENIED: Network rule/],
      [{ network: [{ kind: "cidr", cidr: "0.0.0.0/0", ports: "any" }] }, /POLICY_DENIED: Network rule/],
      [{ secrets: ["AWS_SECRET_ACCESS_KEY"] }, /POLICY_DENIED: Secret "AWS_SECRET_ACCESS_KEY" is not allowed/],
      [{ ttlSeconds: 901 }, /POLICY_DENIED: TTL 901 s is over/],
      [{ backend: "vm" }, /Invalid arguments|Unrecognized key|backend/i],
      [{ labels: { "mvm-mcp": "0" } }, /Invalid arguments|Unrecognized key|labels/i],
    ];
    for (const [args, expected] of refusals) {
      const r = await client.callTool({ name: "create_sandbox", arguments: args });
      assert.equal(r.isError, true, `${JSON.stringify(args)} was accepted: ${textOf(r)}`);
      assert.match(textOf(r), expected);
    }
    const timeout = await client.callTool({ name: "exec", arguments: { sandboxId: id, argv: ["true"], timeoutSeconds: 121 } });
    assert.match(textOf(timeout), /POLICY_DENIED: Timeout 121 s is over/);
    const extra = await client.callTool({ name: "exec", arguments: { sandboxId: id, argv: ["true"], shell: true } });
    assert.equal(extra.isError, true);

    // Sandboxes the MCP server did not make are invisible to the model.
    const foreign = await engine.createSandbox({ image: DEFAULT_IMAGE, backend: "namespace", ttlSeconds: 120 });
    try {
      const poke = await client.callTool({ name: "exec", arguments: { sandboxId: foreign.id, argv: ["true"] } });
      assert.match(textOf(poke), /^NOT_FOUND: /);
      const killForeign = await client.callTool({ name: "kill_sandbox", arguments: { sandboxId: foreign.id } });
      assert.match(textOf(killForeign), /^NOT_FOUND: /);
      assert.equal((await engine.getSandbox(foreign.id)).state, "running");
      assert.ok(!textOf(await client.callTool({ name: "list_sandboxes", arguments: {} })).includes(foreign.id));
    } finally {
      await engine.killSandbox(foreign.id);
    }

    // kill_sandbox, then the end of the session: the kept one stays, the other is killed.
    const second = idOf(await client.callTool({ name: "create_sandbox", arguments: { network: [] } }));
    assert.match(textOf(await client.callTool({ name: "kill_sandbox", arguments: { sandboxId: second } })), /is stopped/);
    const kept = idOf(await client.callTool({ name: "create_sandbox", arguments: { keep: true } }));
    const listed = textOf(await client.callTool({ name: "list_sandboxes", arguments: {} }));
    assert.match(listed, new RegExp(`${id} running .* this-session`));
    assert.match(listed, new RegExp(`${kept} running .* kept`));
    await client.close();
    await exited;
    assert.equal((await engine.getSandbox(id)).state, "stopped");
    assert.equal((await engine.getSandbox(kept)).state, "running");

    // A later session sees the kept sandbox and can kill it.
    const { client: again } = await stdioClient();
    try {
      assert.match(textOf(await again.callTool({ name: "list_sandboxes", arguments: {} })), new RegExp(`${kept} running`));
      const out = await again.callTool({ name: "exec", arguments: { sandboxId: kept, argv: ["echo", "still here"] } });
      assert.match(textOf(out), /still here/);
      assert.match(textOf(await again.callTool({ name: "kill_sandbox", arguments: { sandboxId: kept } })), /is stopped/);
    } finally {
      await again.close();
    }
  });

  async function startHttp(extraArgs: string[] = [], token: string | null = TOKEN): Promise<{ child: ChildProcess; url: URL; stderr: () => string; exit: Promise<number | null> }> {
    const childEnv = { ...env };
    if (token === null) delete childEnv.MVM_MCP_TOKEN;
    else childEnv.MVM_MCP_TOKEN = token;
    const child = spawn(process.execPath, [MVMCTL, "mcp", "--http", "--port", "0", ...extraArgs], { env: childEnv, stdio: ["ignore", "ignore", "pipe"] });
    let seen = "";
    const exit = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    const url = await new Promise<URL | undefined>((resolve) => {
      child.stderr!.on("data", (c: Buffer) => {
        seen += c.toString();
        const m = /listening on (http:\S+)/.exec(seen);
        if (m) resolve(new URL(m[1]!));
      });
      void exit.then(() => resolve(undefined));
    });
    return { child, url: url ?? new URL("http://127.0.0.1:1/"), stderr: () => seen, exit };
  }

  test("over HTTP: the bearer token is required; a session's end kills its sandboxes", { timeout: 120_000 }, async () => {
    const server = await startHttp();
    try {
      const ping = (headers: Record<string, string>) =>
        fetch(server.url, {
          method: "POST",
          headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers },
          body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } } }),
        });
      assert.equal((await ping({})).status, 401, "no token");
      assert.equal((await ping({ authorization: `Bearer ${TOKEN}x` })).status, 401, "wrong token");
      assert.equal((await ping({ authorization: `Bearer ${TOKEN.slice(0, -1)}` })).status, 401, "a prefix of the token");
      assert.equal((await ping({ authorization: TOKEN })).status, 401, "no Bearer scheme");

      const refused = new Client({ name: "mvm-test", version: "1.0.0" });
      await assert.rejects(refused.connect(new StreamableHTTPClientTransport(server.url)));

      const client = new Client({ name: "mvm-test", version: "1.0.0" });
      const transport = new StreamableHTTPClientTransport(server.url, { requestInit: { headers: { authorization: `Bearer ${TOKEN}` } } });
      await client.connect(transport);
      const progress: string[] = [];
      const id = idOf(await client.callTool({ name: "create_sandbox", arguments: {} }, undefined, { onprogress: (p) => progress.push(p.message ?? "") }));
      assert.ok(progress.length >= 1);
      assert.deepEqual((await engine.getSandbox(id)).network?.policy.rules, RULES, "absent network: all the config allows");
      const r = await client.callTool({ name: "run_code", arguments: { sandboxId: id, language: "python", code: "print('over http')" } });
      assert.match(textOf(r), /over http/);
      const kept = idOf(await client.callTool({ name: "create_sandbox", arguments: { keep: true } }));
      await transport.terminateSession();
      await client.close();
      assert.equal((await engine.getSandbox(id)).state, "stopped");
      assert.equal((await engine.getSandbox(kept)).state, "running");
      await engine.killSandbox(kept);
    } finally {
      server.child.kill("SIGTERM");
      assert.equal(await server.exit, 0, server.stderr());
    }
  });

  test("over HTTP: a non-loopback address, a missing token and a short one are refused", { timeout: 60_000 }, async () => {
    const wide = await startHttp(["--host", "0.0.0.0"]);
    assert.notEqual(await wide.exit, 0);
    assert.match(wide.stderr(), /loopback only, not "0\.0\.0\.0"/);
    const none = await startHttp([], null);
    assert.notEqual(await none.exit, 0);
    assert.match(none.stderr(), /needs a bearer token/);
    const short = await startHttp([], "short");
    assert.notEqual(await short.exit, 0);
    assert.match(short.stderr(), /at least 32 printable characters/);
  });
});
