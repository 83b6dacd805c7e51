#!/usr/bin/env node
/**
 * The mvmctl executable: runs the CLI on this process's arguments and exits with its code.
 */
import { runCli } from "./cli.js";
import { processIo } from "./process-io.js";

const code = await runCli(process.argv.slice(2), processIo());
process.exitCode = code;
// Everything mvmctl opened is closed by now; a handle left open by a dependency must not keep it running.
setTimeout(() => process.exit(code), 2000).unref();
