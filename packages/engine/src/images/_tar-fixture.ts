/**
 * Test helper: writes tar archives byte by byte, including the hostile entries a real tar tool
 * would refuse to produce (absolute paths, `..`, links out of the tree, device nodes).
 */
import { gzipSync } from "node:zlib";

export interface TarEntrySpec {
  path: string;
  type?: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo" | "sparse";
  mode?: number;
  uid?: number;
  gid?: number;
  content?: string | Buffer;
  linkpath?: string;
  /** Seconds since the epoch. @default 1700000000 */
  mtime?: number;
}

const TYPEFLAG = { file: "0", hardlink: "1", symlink: "2", char: "3", block: "4", dir: "5", fifo: "6", sparse: "S" } as const;

export function buildTar(entries: readonly TarEntrySpec[], options: { gzip?: boolean } = {}): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? "file";
    const body = type === "file" || type === "sparse" ? Buffer.from(e.content ?? "") : Buffer.alloc(0);
    const pax: string[] = [];
    if (Buffer.byteLength(e.path) > 100) pax.push(paxRecord("path", e.path));
    if (e.linkpath !== undefined && Buffer.byteLength(e.linkpath) > 100) pax.push(paxRecord("linkpath", e.linkpath));
    if (pax.length > 0) {
      const data = Buffer.from(pax.join(""));
      blocks.push(header({ path: "PaxHeader", typeflag: "x", mode: 0o644, size: data.length }), pad(data));
    }
    blocks.push(
      header({
        path: e.path.slice(0, 100),
        typeflag: TYPEFLAG[type],
        mode: e.mode ?? (type === "dir" ? 0o755 : 0o644),
        uid: e.uid ?? 0,
        gid: e.gid ?? 0,
        size: body.length,
        mtime: e.mtime ?? 1_700_000_000,
        linkpath: (e.linkpath ?? "").slice(0, 100),
        devmajor: type === "char" || type === "block" ? 1 : 0,
        devminor: type === "char" || type === "block" ? 3 : 0,
      }),
    );
    if (body.length > 0) blocks.push(pad(body));
  }
  blocks.push(Buffer.alloc(1024));
  const tar = Buffer.concat(blocks);
  return options.gzip ? gzipSync(tar) : tar;
}

function paxRecord(key: string, value: string): string {
  const rest = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(rest) + 1;
  while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest);
  return `${len}${rest}`;
}

interface HeaderFields {
  path: string;
  typeflag: string;
  mode: number;
  uid?: number;
  gid?: number;
  size: number;
  mtime?: number;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
}

function header(f: HeaderFields): Buffer {
  const h = Buffer.alloc(512);
  h.write(f.path, 0, 100, "utf8");
  octal(h, 100, 8, f.mode);
  octal(h, 108, 8, f.uid ?? 0);
  octal(h, 116, 8, f.gid ?? 0);
  octal(h, 124, 12, f.size);
  octal(h, 136, 12, f.mtime ?? 1_700_000_000);
  h.write(f.typeflag, 156, 1, "latin1");
  h.write(f.linkpath ?? "", 157, 100, "utf8");
  h.write("ustar\0", 257, 6, "latin1");
  h.write("00", 263, 2, "latin1");
  octal(h, 329, 8, f.devmajor ?? 0);
  octal(h, 337, 8, f.devminor ?? 0);
  h.fill(" ", 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return h;
}

function octal(buf: Buffer, offset: number, width: number, value: number): void {
  buf.write(`${value.toString(8).padStart(width - 1, "0")}\0`, offset, width, "latin1");
}

function pad(data: Buffer): Buffer {
  const rem = data.length % 512;
  return rem === 0 ? data : Buffer.concat([data, Buffer.alloc(512 - rem)]);
}
