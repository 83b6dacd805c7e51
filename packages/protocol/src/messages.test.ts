import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type * as z from "zod/mini";
import {
  AgentErrorBody,
  AgentHello,
  AgentToHost,
  Argv,
  DETACHED_PROC_BASE,
  Env,
  EnvName,
  ExecRequest,
  ExitEvent,
  HostHello,
  HostToAgent,
  MAX_DIR_ENTRIES,
  MAX_PATH_LENGTH,
  MAX_REQUEST_ID,
  MAX_PTY_CELLS,
  ProcessInfo,
  Request,
  ResizeRequest,
  Results,
  SandboxPath,
  SignalRequest,
  StreamAbort,
  encodeControl,
  isSandboxPath,
  MAX_CONTROL_DEPTH,
  parseControl,
  type Op,
} from "./messages.js";
import { ERROR_CODES } from "./errors.js";

const ok = (schema: z.ZodMiniType, value: unknown): boolean => schema.safeParse(value).success;

const exec = {
  t: "req",
  id: 1,
  op: "exec",
  argv: ["/bin/echo", "hi"],
  env: { LANG: "C.UTF-8" },
  cwd: "/work",
  stdin: null,
  stdout: 1,
  stderr: 2,
  timeoutMs: 0,
  killGraceMs: 2000,
  maxOutputBytes: 1024,
};

/** One valid request per op, and one valid result per op. */
const requests: Record<Op, object> = {
  exec,
  signal: { t: "req", id: 2, op: "signal", proc: 1, signal: "SIGTERM" },
  listProcesses: { t: "req", id: 3, op: "listProcesses" },
  readFile: { t: "req", id: 4, op: "readFile", path: "/etc/hostname", stream: 3 },
  writeFile: { t: "req", id: 5, op: "writeFile", path: "/work/a.txt", stream: 4, mode: 0o644, createParents: true },
  listDir: { t: "req", id: 6, op: "listDir", path: "/" },
  stat: { t: "req", id: 7, op: "stat", path: "/work" },
  mkdir: { t: "req", id: 8, op: "mkdir", path: "/work/d", recursive: false },
  remove: { t: "req", id: 9, op: "remove", path: "/work/d", recursive: true },
  rename: { t: "req", id: 10, op: "rename", from: "/work/a", to: "/work/b" },
  ping: { t: "req", id: 11, op: "ping" },
  shutdown: { t: "req", id: 12, op: "shutdown" },
  quiesce: { t: "req", id: 13, op: "quiesce" },
  resize: { t: "req", id: 14, op: "resize", proc: 1, cols: 80, rows: 24 },
};
const fileInfo = { name: "a.txt", type: "file", size: 3, mode: 0o644, mtimeMs: 1700000000000.5 };
const results: Record<Op, object> = {
  exec: { pid: 42 },
  signal: {},
  listProcesses: { processes: [{ proc: 1, pid: 42, argv: ["sleep", "1"], startedAtMs: 1700000000000 }] },
  readFile: { size: 0 },
  writeFile: { bytes: 10 },
  listDir: { entries: [fileInfo], truncated: false },
  stat: fileInfo,
  mkdir: {},
  remove: {},
  rename: {},
  ping: {},
  shutdown: {},
  quiesce: {},
  resize: {},
};

describe("isSandboxPath / SandboxPath", () => {
  const good = ["/", "/a", "/a/b", "/work/file.txt", "/.hidden", "/a..b", "/...", "/a b/ç/😀", "/a/-"];
  const bad = ["", "a", "a/b", "./a", "/a/", "//", "/a//b", "/.", "/..", "/a/.", "/a/..", "/a/../b", "/a/./b", "/a\0b", "\0", "/./"];
  for (const p of good) it(`accepts ${JSON.stringify(p)}`, () => assert.ok(isSandboxPath(p) && ok(SandboxPath, p)));
  for (const p of bad) it(`rejects ${JSON.stringify(p)}`, () => assert.ok(!isSandboxPath(p) && !ok(SandboxPath, p)));

  it("accepts exactly MAX_PATH_LENGTH code units and rejects one more", () => {
    const longest = "/" + "a".repeat(MAX_PATH_LENGTH - 1);
    assert.ok(ok(SandboxPath, longest));
    assert.ok(!ok(SandboxPath, longest + "a"));
  });

  it("rejects non-strings", () => {
    for (const v of [null, 1, ["/"], { path: "/" }]) assert.ok(!ok(SandboxPath, v));
  });
});

describe("EnvName / Env", () => {
  for (const n of ["A", "_", "a_1", "PATH", "_X9", "x".repeat(256)]) {
    it(`accepts the name ${JSON.stringify(n.slice(0, 12))}`, () => assert.ok(ok(EnvName, n)));
  }
  for (const n of ["", "1A", "A-B", "A=B", "A B", "É", "A\0", "x".repeat(257), "A\n"]) {
    it(`rejects the name ${JSON.stringify(n.slice(0, 12))}`, () => assert.ok(!ok(EnvName, n)));
  }

  it("bounds the number of variables at 1024", () => {
    const env = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`V${i}`, "x"]));
    assert.ok(ok(Env, env(1024)));
    assert.ok(!ok(Env, env(1025)));
  });

  it("bounds values at 128 KiB and rejects NUL", () => {
    assert.ok(ok(Env, { A: "x".repeat(128 * 1024) }));
    assert.ok(!ok(Env, { A: "x".repeat(128 * 1024 + 1) }));
    assert.ok(!ok(Env, { A: "a\0b" }));
    assert.ok(!ok(Env, { A: 1 }));
  });

  it("rejects a bad name inside an env object", () => {
    assert.ok(!ok(Env, { "BAD-NAME": "x" }));
  });
});

describe("Argv", () => {
  it("needs at least one argument and a non-empty argv[0]", () => {
    assert.ok(!ok(Argv, []));
    assert.ok(!ok(Argv, [""]));
    assert.ok(ok(Argv, ["a", ""]));
  });

  it("bounds the count at 4096 and each argument at 128 KiB", () => {
    assert.ok(ok(Argv, Array.from({ length: 4096 }, () => "a")));
    assert.ok(!ok(Argv, Array.from({ length: 4097 }, () => "a")));
    assert.ok(ok(Argv, ["a", "x".repeat(128 * 1024)]));
    assert.ok(!ok(Argv, ["a", "x".repeat(128 * 1024 + 1)]));
  });

  it("rejects NUL and non-strings", () => {
    assert.ok(!ok(Argv, ["a", "b\0c"]));
    assert.ok(!ok(Argv, ["a", 1]));
    assert.ok(!ok(Argv, "a"));
  });
});

describe("requests", () => {
  it("exec with a pty: a size of 1 to MAX_PTY_CELLS cells each way, and a stdin stream", () => {
    const withStdin = { ...exec, stdin: 3 };
    assert.ok(ok(ExecRequest, { ...withStdin, pty: { cols: 80, rows: 24 } }));
    assert.ok(ok(ExecRequest, { ...withStdin, pty: { cols: MAX_PTY_CELLS, rows: 1 } }));
    assert.ok(!ok(ExecRequest, { ...withStdin, pty: { cols: MAX_PTY_CELLS + 1, rows: 24 } }));
    assert.ok(!ok(ExecRequest, { ...withStdin, pty: { cols: 0, rows: 24 } }));
    assert.ok(!ok(ExecRequest, { ...withStdin, pty: { cols: 80, rows: 2.5 } }));
    assert.ok(!ok(ExecRequest, { ...withStdin, pty: { cols: 80, rows: 24, x: 1 } }));
    assert.ok(!ok(ExecRequest, { ...exec, pty: { cols: 80, rows: 24 } }), "a pty without stdin");
    assert.ok(!ok(ResizeRequest, { t: "req", id: 1, op: "resize", proc: 1, cols: 80, rows: MAX_PTY_CELLS + 1 }));
  });

  for (const [op, req] of Object.entries(requests)) {
    it(`accepts a valid ${op} request and rejects it with an extra field`, () => {
      assert.ok(ok(Request, req), op);
      assert.ok(ok(HostToAgent, req), op);
      assert.ok(!ok(HostToAgent, { ...req, extra: 1 }), op);
      assert.ok(!ok(HostToAgent, { ...req, id: -1 }), op);
      assert.ok(!ok(HostToAgent, { ...req, id: 0x1_0000_0000 }), op);
      assert.ok(ok(HostToAgent, { ...req, id: MAX_REQUEST_ID }), op);
      assert.ok(!ok(HostToAgent, { ...req, id: DETACHED_PROC_BASE }), op);
      assert.ok(!ok(HostToAgent, { ...req, id: 1.5 }), op);
    });
  }

  it("keeps the handles of detached processes out of the host's request ids", () => {
    assert.equal(DETACHED_PROC_BASE, MAX_REQUEST_ID + 1);
    assert.ok(ok(SignalRequest, { t: "req", id: 1, op: "signal", proc: DETACHED_PROC_BASE, signal: "SIGKILL" }));
    assert.ok(ok(ProcessInfo, { proc: 0xffff_ffff, pid: 2, argv: [], startedAtMs: 0 }));
  });

  it("rejects an unknown op", () => {
    assert.ok(!ok(HostToAgent, { t: "req", id: 1, op: "eval", code: "1" }));
  });

  it("bounds exec's numbers", () => {
    assert.ok(ok(ExecRequest, { ...exec, timeoutMs: 7 * 24 * 3600 * 1000, killGraceMs: 60_000 }));
    assert.ok(!ok(ExecRequest, { ...exec, timeoutMs: 7 * 24 * 3600 * 1000 + 1 }));
    assert.ok(!ok(ExecRequest, { ...exec, killGraceMs: 60_001 }));
    assert.ok(!ok(ExecRequest, { ...exec, timeoutMs: -1 }));
    assert.ok(!ok(ExecRequest, { ...exec, maxOutputBytes: 0.5 }));
  });

  it("takes stream ids from 1 and stdin may be null", () => {
    assert.ok(ok(ExecRequest, { ...exec, stdin: 3 }));
    assert.ok(!ok(ExecRequest, { ...exec, stdout: 0 }));
    assert.ok(!ok(ExecRequest, { ...exec, stdin: 0 }));
    assert.ok(!ok(ExecRequest, { ...exec, stderr: 0x1_0000_0000 }));
  });

  it("requires every field", () => {
    for (const key of Object.keys(exec)) {
      const partial: Record<string, unknown> = { ...exec };
      delete partial[key];
      assert.ok(!ok(ExecRequest, partial), key);
    }
  });

  it("rejects relative paths in file requests", () => {
    assert.ok(!ok(HostToAgent, { ...requests.readFile, path: "etc/hostname" }));
    assert.ok(!ok(HostToAgent, { ...requests.rename, to: "/work/../etc" }));
    assert.ok(!ok(HostToAgent, { ...requests.writeFile, mode: 0o1777 }));
  });

  it("accepts only the listed signals", () => {
    assert.ok(ok(HostToAgent, { ...requests.signal, signal: "SIGKILL" }));
    assert.ok(!ok(HostToAgent, { ...requests.signal, signal: "SIGSEGV" }));
    assert.ok(!ok(HostToAgent, { ...requests.signal, signal: 9 }));
  });
});

describe("results and agent messages", () => {
  for (const [op, result] of Object.entries(results) as [Op, object][]) {
    it(`accepts a valid ${op} result and rejects it with an extra field`, () => {
      assert.ok(ok(Results[op], result), op);
      assert.ok(!ok(Results[op], { ...result, extra: true }), op);
      assert.ok(ok(AgentToHost, { t: "res", id: 1, ok: true, result }));
    });
  }

  it("caps directory listings at MAX_DIR_ENTRIES", () => {
    const entries = (n: number) => Array.from({ length: n }, () => fileInfo);
    assert.ok(ok(Results.listDir, { entries: entries(MAX_DIR_ENTRIES), truncated: true }));
    assert.ok(!ok(Results.listDir, { entries: entries(MAX_DIR_ENTRIES + 1), truncated: true }));
  });

  it("accepts every registered error code in an error response and nothing else", () => {
    for (const code of ERROR_CODES) {
      assert.ok(ok(AgentToHost, { t: "res", id: 1, ok: false, error: { code, message: "m" } }), code);
    }
    assert.ok(!ok(AgentErrorBody, { code: "EPERM", message: "m" }));
    assert.ok(!ok(AgentErrorBody, { code: "INTERNAL", message: "m".repeat(4097) }));
    assert.ok(!ok(AgentToHost, { t: "res", id: 1, ok: false, error: { code: "INTERNAL", message: "m", stack: "" } }));
    assert.ok(!ok(AgentToHost, { t: "res", id: 1, ok: false, result: {} }));
    assert.ok(!ok(AgentToHost, { t: "res", id: 1, ok: true }));
  });

  const exit = {
    t: "exit",
    proc: 1,
    exitCode: null,
    signal: "SIGKILL",
    timedOut: true,
    durationMs: 12.5,
    stdoutBytes: 3,
    stderrBytes: 0,
    stdoutTruncated: false,
    stderrTruncated: false,
  };
  it("checks exit events", () => {
    assert.ok(ok(ExitEvent, exit));
    assert.ok(ok(ExitEvent, { ...exit, exitCode: 255, signal: null }));
    assert.ok(!ok(ExitEvent, { ...exit, exitCode: 256 }));
    assert.ok(!ok(ExitEvent, { ...exit, exitCode: -1 }));
    assert.ok(!ok(ExitEvent, { ...exit, signal: "S".repeat(17) }));
    assert.ok(!ok(ExitEvent, { ...exit, durationMs: -1 }));
    assert.ok(ok(AgentToHost, exit));
    assert.ok(!ok(HostToAgent, exit));
  });

  it("checks aborts in both directions", () => {
    const abort = { t: "abort", stream: 3, error: { code: "ABORTED", message: "gone" } };
    assert.ok(ok(StreamAbort, abort) && ok(AgentToHost, abort) && ok(HostToAgent, abort));
    assert.ok(!ok(StreamAbort, { ...abort, stream: 0 }));
  });

  it("checks the handshake", () => {
    assert.ok(ok(AgentHello, { t: "hello", versions: [1], agent: "mvm-agent/0.1.0" }));
    assert.ok(!ok(AgentHello, { t: "hello", versions: [], agent: "a" }));
    assert.ok(!ok(AgentHello, { t: "hello", versions: [1, 2, 3, 4, 5, 6, 7, 8, 9], agent: "a" }));
    assert.ok(!ok(AgentHello, { t: "hello", versions: [1], agent: "a".repeat(65) }));
    assert.ok(ok(HostHello, { t: "hello", version: 1 }));
    assert.ok(!ok(HostHello, { t: "hello", version: 2 }));
    assert.ok(!ok(AgentToHost, { t: "hello", versions: [1], agent: "a" }));
    assert.ok(!ok(HostToAgent, { t: "hello", version: 1 }));
  });
});

describe("parseControl / encodeControl", () => {
  const bytes = (s: string) => new TextEncoder().encode(s);

  it("round-trips a message", () => {
    assert.deepEqual(parseControl(HostToAgent, encodeControl(exec)), exec);
  });

  it("rejects bytes that are not UTF-8 JSON", () => {
    for (const payload of [Buffer.from([0xff, 0xfe]), bytes(""), bytes("{"), bytes("{'t':1}"), Buffer.from([0x7b, 0xc3])]) {
      assert.throws(() => parseControl(HostHello, payload), { message: "Bad control message: not UTF-8 JSON" });
    }
  });

  it("names the first bad field", () => {
    assert.throws(() => parseControl(HostToAgent, encodeControl({ ...exec, cwd: "work" })), /^Error: Bad control message/);
    assert.throws(() => parseControl(AgentHello, bytes('{"t":"hello","versions":[1],"agent":7}')), /Bad control message: agent:/);
  });

  it("keeps the error message bounded whatever the input", () => {
    const hugeKey = "k".repeat(60_000);
    const payload = bytes(`{"t":"hello","version":1,"${hugeKey}":1}`);
    assert.throws(
      () => parseControl(HostHello, payload),
      (err: unknown) => err instanceof Error && err.message.startsWith("Bad control message") && err.message.length <= 512,
    );
  });

  it("rejects a __proto__ key anywhere", () => {
    assert.throws(() => parseControl(HostHello, bytes('{"t":"hello","version":1,"__proto__":{"x":1}}')), /Bad control message/);
    assert.throws(() => parseControl(HostHello, bytes('{"t":"hello","version":1,"__proto__":1}')), /Bad control message/);
    assert.throws(() => parseControl(AgentToHost, bytes('{"t":"res","id":1,"ok":true,"result":{"__proto__":{}}}')), { message: 'Bad control message: key "__proto__"' });
  });

  it("rejects JSON nested deeper than MAX_CONTROL_DEPTH, even in a result it only carries", () => {
    const nested = (n: number) => "[".repeat(n) + "]".repeat(n);
    assert.throws(() => parseControl(HostToAgent, bytes(`{"t":"req","id":1,"op":"exec","argv":${nested(30_000)}}`)), {
      message: `Bad control message: nested deeper than ${MAX_CONTROL_DEPTH}`,
    });
    // `result` is checked later against the op's schema; its depth is bounded here.
    assert.throws(() => parseControl(AgentToHost, bytes(`{"t":"res","id":1,"ok":true,"result":${nested(MAX_CONTROL_DEPTH)}}`)), /nested deeper/);
    const res = parseControl(AgentToHost, bytes(`{"t":"res","id":1,"ok":true,"result":${nested(MAX_CONTROL_DEPTH - 1)}}`));
    assert.equal(res.t, "res");
  });

  it("rejects a key written twice in one object, at any depth, naming it", () => {
    // Under JSON.parse the last one would win: a stat result of size 2 here.
    const stat = '{"t":"res","id":1,"ok":true,"result":{"name":"f","type":"file","size":1,"mode":420,"mtimeMs":0,"size":2}}';
    assert.throws(() => parseControl(AgentToHost, bytes(stat)), { message: 'Bad control message: duplicate key "size"' });
    assert.throws(() => parseControl(AgentToHost, bytes('{"t":"res","id":1,"id":2,"ok":true,"result":{}}')), { message: 'Bad control message: duplicate key "id"' });
    const env = `{"t":"req","id":1,"op":"exec","argv":["a"],"env":{"A":"1","\\u0041":"2"},"cwd":"/","stdin":null,"stdout":2,"stderr":3,"timeoutMs":0,"killGraceMs":0,"maxOutputBytes":0}`;
    assert.throws(() => parseControl(HostToAgent, bytes(env)), { message: 'Bad control message: duplicate key "A"' });
    assert.throws(() => parseControl(AgentHello, bytes('{"t":"hello","versions":[1],"agent":"a","agent":"b"}')), /duplicate key "agent"/);
  });
});
