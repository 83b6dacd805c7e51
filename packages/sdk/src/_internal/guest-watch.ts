/**
 * The program `files.watch` runs inside the sandbox with the agent runtime's Node.js: it watches
 * a directory with fs.watch (inotify) and prints one JSON object a line. It is a real function,
 * type-checked here and sent as its source, so it may use nothing from outside its body.
 *
 * Lines: `{"ready":true}` once watching; `{"type":"create"|"write"|"remove","name":"rel/path"}`
 * per change; `{"type":"overflow"}` when the kernel dropped events; `{"error":"ENOENT"}` and exit 2
 * when the path cannot be watched. The host trusts none of it: see watch.ts.
 */
export function guestWatch(root: string, recursive: boolean): void {
  // No named inner functions: a bundler that keeps names (esbuild keepNames) wraps them in a
  // helper that does not exist where this source runs.
  const fs = require("node:fs") as typeof import("node:fs");
  const path = require("node:path") as typeof import("node:path");
  const events = [
    (value: unknown): void => void process.stdout.write(`${JSON.stringify(value)}\n`),
    (err: unknown): never => {
      process.stdout.write(`${JSON.stringify({ error: String((err as { code?: unknown } | undefined)?.code ?? "EIO").slice(0, 32) })}\n`);
      process.exit(2);
    },
  ] as const;
  try {
    if (!fs.statSync(root).isDirectory()) events[1]({ code: "ENOTDIR" });
    const watcher = fs.watch(root, { recursive, encoding: "utf8" }, (kind, name) => {
      if (name === null) {
        events[0]({ type: "overflow" });
        return;
      }
      let type = kind === "change" ? "write" : "remove";
      if (kind === "rename") {
        try {
          fs.lstatSync(path.join(root, name));
          type = "create";
        } catch {
          // gone: a removal (or the old name of a rename)
        }
      }
      events[0]({ type, name });
    });
    watcher.on("error", (err) => events[1](err));
  } catch (err) {
    events[1](err);
  }
  events[0]({ ready: true });
}

/** Argv that runs {@link guestWatch} on `root` through the agent runtime (mounted read-only at /.mvm). */
export function guestWatchArgv(root: string, recursive: boolean): string[] {
  return [
    "/.mvm/bin/ld-linux-x86-64.so.2",
    "--library-path",
    "/.mvm/lib",
    "/.mvm/bin/node",
    "-e",
    `(${guestWatch.toString()})(process.argv[1], process.argv[2] === "1")`,
    root,
    recursive ? "1" : "0",
  ];
}
