#!/usr/bin/env node
/**
 * mvmctl from the compiled modules (the shipped executable is bin/mvmctl.cjs, which runs the same
 * code from one bundle): runs the CLI on this process's arguments and exits with its code.
 */
import { runMain } from "./run-main.js";

await runMain(process.argv.slice(2));
