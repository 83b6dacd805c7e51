#!/usr/bin/env node
// Bundles the compiled agent into one CommonJS file, dist/agent.cjs, with @mvm/protocol and zod inlined.
// CommonJS because Node starts a CommonJS entry point ~15 ms sooner than an ES module.
// Usage: node packages/agent/scripts/bundle.mjs [--outfile <path>]
//
// Layout of the output, chosen for startup latency: the prelude (dist/main.js: arguments, fd
// hygiene, the channel, the hello) is ordinary code. The session and everything it imports (the
// protocol schemas and zod) is stored as one string and compiled with vm.runInThisContext only
// when main.js imports "./session.js", after the hello is on the wire; before the hello V8 just
// scans a string literal. Stack traces name that code "mvm-agent-session.cjs".
import { existsSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { zodEnglishOnly } from "./zod-english-only.mjs";

const pkgDir = fileURLToPath(new URL("..", import.meta.url));
const mainEntry = `${pkgDir}dist/main.js`;
const sessionEntry = `${pkgDir}dist/session.js`;
const args = process.argv.slice(2);
let outfile = `${pkgDir}dist/agent.cjs`;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--outfile" && args[i + 1]) outfile = args[++i];
  else {
    console.error(`bundle.mjs: unknown argument ${JSON.stringify(args[i])}; usage: bundle.mjs [--outfile <path>]`);
    process.exit(2);
  }
}
for (const entry of [mainEntry, sessionEntry]) {
  if (!existsSync(entry)) {
    console.error(`bundle.mjs: ${entry} is missing; build first: npx tsc -b packages/agent`);
    process.exit(1);
  }
}


const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  minify: true,
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
};

const session = await build({ ...common, format: "cjs", entryPoints: [sessionEntry], write: false, plugins: [zodEnglishOnly] });
const sessionCode = session.outputFiles[0].text;

// The module main.js gets for `import("./session.js")`: compiles the stored session code.
const sessionLoader = `const { runInThisContext } = require("node:vm");
const code = ${JSON.stringify(`(function (require, module, exports) {${sessionCode}\n})`)};
const m = { exports: {} };
runInThisContext(code, { filename: "mvm-agent-session.cjs" })(require, m, m.exports);
module.exports.Session = m.exports.Session;
`;

const embedSession = {
  name: "embed-session",
  setup(b) {
    b.onResolve({ filter: /^\.\/session\.js$/ }, (a) =>
      a.importer === mainEntry ? { path: "session", namespace: "mvm-embedded" } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "mvm-embedded" }, () => ({ contents: sessionLoader, loader: "js", resolveDir: pkgDir }));
  },
};

await build({ ...common, format: "cjs", entryPoints: [mainEntry], outfile, plugins: [zodEnglishOnly, embedSession] });
console.error(`bundle.mjs: wrote ${outfile} (${statSync(outfile).size} bytes)`);

// The function-call wrapper (docs/FUNCTIONS.md), shipped beside the agent in its runtime.
const fnEntry = `${pkgDir}dist/fn/wrapper-main.js`;
const fnOutfile = outfile.replace(/agent\.cjs$/, "fn-wrapper.cjs");
if (fnOutfile !== outfile) {
  await build({ ...common, format: "cjs", entryPoints: [fnEntry], outfile: fnOutfile, plugins: [zodEnglishOnly] });
  console.error(`bundle.mjs: wrote ${fnOutfile} (${statSync(fnOutfile).size} bytes)`);
}
