// Terminals (docs/TERMINALS.md), namespace backend, engine API in-process:
//  - a pty exec of `true` start to exit, beside a plain exec of `true` (the same sandbox, interleaved);
//  - one keystroke's round trip on a terminal (writeStdin of one byte until the terminal's echo
//    arrives), beside the same byte through a pipe to `cat` and back.
// BENCH_TERM_RUNS (default 50) of each, two warm-ups discarded.
//
//   node bench/run.mjs terminals
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

/** A process whose output chunks wake the waiter. */
async function startWatched(engine, id, request) {
  let text = "";
  let wake = () => {};
  const started = await engine.exec(id, request, {
    onStdout: (c) => {
      text += Buffer.from(c).toString("latin1");
      wake();
    },
  });
  return {
    started,
    /** Resolves once the output (so far) has grown by `n` bytes since `from`. */
    async grown(from, n) {
      while (text.length < from + n) await new Promise((resolve) => (wake = resolve));
    },
    get length() {
      return text.length;
    },
  };
}

export async function benchTerminals({ log, summary, ratio, openEngine, imagesDir, image }) {
  const runs = Number(process.env.BENCH_TERM_RUNS ?? 50);
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-term-"));
  const engine = await openEngine({ stateDir, imagesDir, defaultTtlSeconds: 3600, backends: ["namespace"] });
  try {
    const sb = await engine.createSandbox({ backend: "namespace", image, acknowledgeContainerTier: true });
    const ptyStart = [];
    const plainStart = [];
    for (let i = 0; i < runs + 2; i++) {
      let t0 = performance.now();
      await (await engine.exec(sb.id, { argv: ["true"] }, {})).exit;
      const plain = performance.now() - t0;
      t0 = performance.now();
      await (await engine.exec(sb.id, { argv: ["true"], pty: { cols: 80, rows: 24 } }, {})).exit;
      const pty = performance.now() - t0;
      if (i >= 2) {
        plainStart.push(plain);
        ptyStart.push(pty);
      }
    }
    // `stty raw -echo` would change what the terminal echoes; cat on a canonical terminal echoes each byte at once.
    const term = await startWatched(engine, sb.id, { argv: ["cat"], pty: { cols: 80, rows: 24 } });
    const pipe = await startWatched(engine, sb.id, { argv: ["cat"], openStdin: true });
    const keyPty = [];
    const keyPipe = [];
    for (let i = 0; i < runs + 2; i++) {
      let from = term.length;
      let t0 = performance.now();
      await engine.writeStdin(sb.id, term.started.proc, Buffer.from("x"));
      await term.grown(from, 1);
      const k = performance.now() - t0;
      from = pipe.length;
      t0 = performance.now();
      await engine.writeStdin(sb.id, pipe.started.proc, Buffer.from("x"));
      await pipe.grown(from, 1);
      const p = performance.now() - t0;
      if (i >= 2) {
        keyPty.push(k);
        keyPipe.push(p);
      }
    }
    await engine.killSandbox(sb.id);
    const s = summary(ptyStart);
    const b = summary(plainStart);
    const kp = summary(keyPty);
    const kb = summary(keyPipe);
    const out = {
      unit: "ms",
      runs,
      ptyExecTrue: s,
      baselinePlainExecTrue: b,
      startRatioP50: ratio(s.p50, b.p50),
      startRatioP95: ratio(s.p95, b.p95),
      keystrokeEchoPty: kp,
      baselineByteThroughPipeCat: kb,
      keystrokeRatioP50: ratio(kp.p50, kb.p50),
      keystrokeRatioP95: ratio(kp.p95, kb.p95),
    };
    log("terminals", JSON.stringify(out));
    return out;
  } finally {
    await engine.close();
    await rm(stateDir, { recursive: true, force: true });
  }
}
