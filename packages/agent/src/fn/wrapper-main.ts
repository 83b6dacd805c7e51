/**
 * Entry point of `fn-wrapper.cjs`: `node fn-wrapper.cjs [--via LOADER LIBDIR NODE]` runs the wrapper
 * (reading a call on stdin); `node fn-wrapper.cjs --child` is the function's own process, started
 * by the wrapper. See wrapper.ts and docs/FUNCTIONS.md.
 */
import { runChild } from "./child.js";
import { runWrapper } from "./wrapper.js";

const argv = process.argv.slice(2);
if (argv[0] === "--child") {
  void runChild().then(() => {
    // Flush the caller's streams, then end: whatever the function left running is not waited for.
    process.stdout.write("", () => process.stderr.write("", () => process.exit(0)));
  });
} else {
  void runWrapper(process.argv[1] ?? "", argv).then((code) => {
    process.exitCode = code;
    process.stdin.destroy();
  });
}
