/**
 * Test fixture: writes GNU-format tar archives entry by entry, including entries no honest tar
 * would write (`../` names, device nodes, sizes past a cap), to feed restore hostile input.
 */

export interface TarEntry {
  /** Raw name bytes (a string is UTF-8); longer than 100 bytes gets a GNU long-name entry. */
  readonly name: string | Buffer;
  /** "0" file, "1" hard link, "2" symlink, "3" char device, "5" directory, "6" FIFO. */
  readonly type: "0" | "1" | "2" | "3" | "5" | "6";
  readonly mode?: number;
  readonly data?: Buffer;
  /** Size written in the header; defaults to the data's length. */
  readonly size?: number;
  readonly linkname?: string;
  readonly device?: readonly [number, number];
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, "0")}\0`;
}

function header(name: Buffer, type: string, entry: Omit<TarEntry, "name" | "type">, size: number): Buffer {
  const block = Buffer.alloc(512);
  name.copy(block, 0, 0, Math.min(100, name.length));
  block.write(octal(entry.mode ?? 0o644, 8), 100, "latin1");
  block.write(octal(1000, 8), 108, "latin1");
  block.write(octal(1000, 8), 116, "latin1");
  block.write(octal(size, 12), 124, "latin1");
  block.write(octal(1_700_000_000, 12), 136, "latin1");
  block.write("        ", 148, "latin1");
  block.write(type, 156, "latin1");
  if (entry.linkname !== undefined) block.write(entry.linkname, 157, "utf8");
  block.write("ustar  \0", 257, "latin1");
  if (entry.device !== undefined) {
    block.write(octal(entry.device[0], 8), 329, "latin1");
    block.write(octal(entry.device[1], 8), 337, "latin1");
  }
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return block;
}

function padded(data: Buffer): Buffer {
  const rest = data.length % 512;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(512 - rest)]);
}

/** The archive of `entries`, ended by two zero blocks. */
export function tarArchive(entries: readonly TarEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const entry of entries) {
    const name = typeof entry.name === "string" ? Buffer.from(entry.name, "utf8") : entry.name;
    if (name.length > 100) {
      const long = Buffer.concat([name, Buffer.from([0])]);
      blocks.push(header(Buffer.from("././@LongLink"), "L", {}, long.length), padded(long));
    }
    const data = entry.data ?? Buffer.alloc(0);
    blocks.push(header(name, entry.type, entry, entry.size ?? data.length), padded(data));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}
