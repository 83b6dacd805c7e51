/**
 * Text helpers for human output. Strings that came from the engine or a sandbox are made safe
 * for a terminal before they are printed: control characters and bidirectional overrides are
 * shown escaped, so they cannot move the cursor, recolour the screen or reorder the line.
 */

const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** `s` with every control or bidi-override character written as `\xNN` or `\u{NNNN}`, cut to `maxLength`. */
export function printable(s: string, maxLength = 4096): string {
  const cut = s.length > maxLength ? `${s.slice(0, maxLength)}…` : s;
  return cut.replace(UNSAFE, (c) => {
    const n = c.codePointAt(0) ?? 0;
    return n <= 0xff ? `\\x${n.toString(16).padStart(2, "0")}` : `\\u{${n.toString(16)}}`;
  });
}

/** A table with a header row; columns are padded to their widest cell, cells made printable. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const cells = [header, ...rows].map((r) => r.map((c) => printable(c, 512)));
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join("");
}

/** Bytes in a short human form: "512 B", "1.5 KiB", "20.0 MiB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return "?";
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = bytes / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}
