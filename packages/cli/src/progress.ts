/**
 * Progress of long engine work (image builds, sandbox creation) on stderr: one updating line on
 * a terminal, plain lines in a pipe or log, nothing in `--json` mode.
 */
import type { ProgressEvent } from "@mvm/protocol";
import type { OutStream } from "./io.js";
import { printable } from "./text.js";

export type ProgressMode = "tty" | "plain" | "off";

/**
 * True for the events of building or fetching an image while a sandbox is created: everything
 * but the "boot" phase, which is the routine start of every sandbox.
 */
export function isImageWork(event: ProgressEvent): boolean {
  return event.phase !== "boot";
}

/** Width of the bar between the brackets, in characters. */
const BAR_WIDTH = 24;
const CLEAR_LINE = "\r\x1b[2K";

/** The mode for a stream: "off" in JSON mode, "tty" on a terminal, "plain" otherwise. */
export function progressMode(stream: OutStream, json: boolean): ProgressMode {
  if (json) return "off";
  return stream.isTTY === true ? "tty" : "plain";
}

/** `fraction` clamped to 0..1, or undefined when absent or not a number. */
function knownFraction(event: ProgressEvent): number | undefined {
  const f = event.fraction;
  if (typeof f !== "number" || Number.isNaN(f)) return undefined;
  return Math.min(1, Math.max(0, f));
}

/** One progress line without a newline: `phase: message [=====>    ]  42%`, at most `width` characters. */
export function formatProgressLine(event: ProgressEvent, width: number): string {
  const head = `${printable(event.phase, 64)}: ${printable(event.message, 512)}`;
  const f = knownFraction(event);
  let tail = "";
  if (f !== undefined) {
    const filled = Math.floor(f * BAR_WIDTH);
    const bar = "=".repeat(filled) + (filled < BAR_WIDTH ? ">" + " ".repeat(BAR_WIDTH - filled - 1) : "");
    tail = ` [${bar}] ${String(Math.floor(f * 100)).padStart(3)}%`;
  }
  const room = Math.max(8, width) - tail.length;
  const shownHead = head.length > room ? `${head.slice(0, Math.max(1, room - 1))}…` : head;
  return shownHead + tail;
}

/** Renders a sequence of progress events on one stream. */
export class ProgressRenderer {
  #lineShown = false;
  #lastKey = "";

  /**
   * @param show which events to render; the others are dropped. @default every event
   */
  constructor(
    private readonly stream: OutStream,
    private readonly mode: ProgressMode,
    private readonly show: (event: ProgressEvent) => boolean = () => true,
  ) {}

  /**
   * Shows one event. Plain mode prints a line when the phase changes, when the fraction enters a
   * new tenth, or (for events without a fraction) when the message changes.
   */
  update(event: ProgressEvent): void {
    if (this.mode === "off" || !this.show(event)) return;
    if (this.mode === "tty") {
      // A terminal that reports no size (0 or absent columns) gets 80; the last column stays free so the line never wraps.
      const columns = this.stream.columns;
      const width = (columns !== undefined && columns > 0 ? columns : 80) - 1;
      this.stream.write(CLEAR_LINE + formatProgressLine(event, width));
      this.#lineShown = true;
      return;
    }
    const f = knownFraction(event);
    const key = `${event.phase}\u0000${f === undefined ? `m${event.message}` : `f${Math.floor(f * 10)}`}`;
    if (key === this.#lastKey) return;
    this.#lastKey = key;
    this.stream.write(`${formatProgressLine(event, 200)}\n`);
  }

  /** Clears the updating line so later output starts on a clean line. */
  done(): void {
    if (this.mode === "tty" && this.#lineShown) this.stream.write(CLEAR_LINE);
    this.#lineShown = false;
  }
}
