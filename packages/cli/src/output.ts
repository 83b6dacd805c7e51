/**
 * How mvmctl writes: results on stdout (human text or JSON), everything else on stderr, and
 * errors as an `error:` line plus a `hint:` line.
 */
import { MvmError, type ProgressEvent } from "@mvm/protocol";
import { ExitCode } from "./exit-code.js";
import type { OutStream } from "./io.js";
import { ProgressRenderer, progressMode } from "./progress.js";
import { printable } from "./text.js";
import { UsageError } from "./usage-error.js";

/** The JSON printed on stdout in `--json` mode when a command fails. */
export interface JsonErrorOutput {
  error: { code: string; message: string; hint?: string };
}

/** What an error looks like to the user, and the exit code it gives. */
export interface ErrorReport {
  code: string;
  message: string;
  hint: string | undefined;
  exitCode: number;
}

/** Classifies anything thrown: usage errors exit 2, everything else 1. */
export function reportOf(err: unknown): ErrorReport {
  if (err instanceof UsageError) {
    return { code: "USAGE", message: err.message, hint: err.hint, exitCode: ExitCode.Usage };
  }
  if (err instanceof MvmError) {
    return { code: err.code, message: err.message, hint: err.hint, exitCode: ExitCode.Error };
  }
  const message = err instanceof Error ? err.message : String(err);
  return {
    code: "INTERNAL",
    message: message === "" ? "Unexpected failure" : message,
    hint: "This is likely a bug in mvmctl; please report it with the command line used",
    exitCode: ExitCode.Error,
  };
}

/** The `error:` and `hint:` lines for a report. */
export function formatErrorLines(report: ErrorReport): string {
  let text = `error: ${printable(report.message)}\n`;
  if (report.hint !== undefined && report.hint !== "") text += `hint: ${printable(report.hint)}\n`;
  return text;
}

export class Output {
  constructor(
    readonly stdout: OutStream,
    readonly stderr: OutStream,
    readonly json: boolean,
  ) {}

  /** Writes `text` on stdout in human mode; nothing in JSON mode. */
  human(text: string): void {
    if (!this.json) this.stdout.write(text);
  }

  /** Writes `value` as JSON on stdout in JSON mode; nothing in human mode. */
  jsonResult(value: unknown): void {
    if (this.json) this.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** Writes a diagnostic line on stderr in both modes. */
  note(text: string): void {
    this.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
  }

  /** A progress renderer on stderr fitting the mode and the terminal, showing the events `show` selects. */
  progress(show?: (event: ProgressEvent) => boolean): ProgressRenderer {
    return new ProgressRenderer(this.stderr, progressMode(this.stderr, this.json), show);
  }

  /** Prints an error (stderr lines, plus JSON on stdout in JSON mode) and returns its exit code. */
  error(err: unknown): number {
    const report = reportOf(err);
    this.stderr.write(formatErrorLines(report));
    if (this.json) {
      const body: JsonErrorOutput = {
        error: { code: report.code, message: report.message, ...(report.hint ? { hint: report.hint } : {}) },
      };
      this.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    }
    return report.exitCode;
  }
}
