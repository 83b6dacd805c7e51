import { test } from "node:test";
import assert from "node:assert/strict";
import { DAEMON_SOCKET_ENV, defaultSocketPath, resolveSocketPath } from "./socket-path.js";

test("root uses /run/mvm whatever the environment says", () => {
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "/run/user/0" }, 0), "/run/mvm/mvmd.sock");
});

test("other users use XDG_RUNTIME_DIR, else /tmp/mvm-<uid>", () => {
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "/run/user/1000" }, 1000), "/run/user/1000/mvm/mvmd.sock");
  assert.equal(defaultSocketPath({}, 1000), "/tmp/mvm-1000/mvmd.sock");
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "" }, 1000), "/tmp/mvm-1000/mvmd.sock");
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "relative/dir" }, 1001), "/tmp/mvm-1001/mvmd.sock");
});

test("an explicit path wins over the environment, which wins over the default", () => {
  const env = { [DAEMON_SOCKET_ENV]: "/srv/mvm.sock", XDG_RUNTIME_DIR: "/run/user/7" };
  assert.deepEqual(resolveSocketPath("/x.sock", env, 7), { path: "/x.sock", explicit: true });
  assert.deepEqual(resolveSocketPath(undefined, env, 7), { path: "/srv/mvm.sock", explicit: true });
  assert.deepEqual(resolveSocketPath(undefined, { XDG_RUNTIME_DIR: "/run/user/7" }, 7), {
    path: "/run/user/7/mvm/mvmd.sock",
    explicit: false,
  });
});
