/**
 * Checks docs/PROTOCOL.md against the code: the frame diagram and its field table against what
 * encodeFrame writes, the quoted constants, the frame-kind limits, the hex examples, every
 * message's field list against its schema, and the error-code table against the registry.
 * Any disagreement fails.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as z from "zod/mini";
import * as protocol from "./index.js";
import { FRAME_HEADER_BYTES, FrameDecoder, FrameError, FrameKind, MAX_STREAM_ID, encodeFrame } from "./frame.js";
import { ERROR_CODES, fromWire } from "./errors.js";
import { Request, Results, type Op } from "./messages.js";

const DOC_URL = new URL("../../../docs/PROTOCOL.md", import.meta.url);
const doc = readFileSync(DOC_URL, "utf8");
const lines = doc.split("\n");

type Row = string[];

function cells(line: string): string[] {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|")) s = s.slice(0, -1);
  return s.split("|").map((c) => c.trim());
}

const isSeparator = (line: string) => /^\s*\|?[\s|:-]+\|?\s*$/.test(line) && line.includes("-");

/** The body of every fenced block whose info string is `lang`. */
function fencedBlocks(lang: string): string[][] {
  const blocks: string[][] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.trim() !== "```" + lang) continue;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i]!.trim() !== "```"; i++) body.push(lines[i]!);
    blocks.push(body);
  }
  return blocks;
}

/** The Markdown table right after a `<!-- marker -->` line: header cells and rows. */
function tableAfter(marker: string): { header: string[]; rows: Row[] } {
  const at = lines.findIndex((l) => l.trim() === `<!-- ${marker} -->`);
  assert.ok(at >= 0, `docs/PROTOCOL.md has no "<!-- ${marker} -->"`);
  let i = at + 1;
  while (i < lines.length && lines[i]!.trim() === "") i++;
  const table: string[] = [];
  for (; i < lines.length && lines[i]!.trim().startsWith("|"); i++) table.push(lines[i]!);
  assert.ok(table.length >= 2, `no table after "<!-- ${marker} -->"`);
  return { header: cells(table[0]!), rows: table.slice(1).filter((l) => !isSeparator(l)).map(cells) };
}

const unquote = (s: string) => s.replace(/`/g, "").trim();

// ---- frame layout ----

interface Field {
  name: string;
  offset: number;
  size: number | "length";
  encoding: string;
}

function layoutBlock(): string[] {
  const blocks = fencedBlocks("frame-layout");
  assert.equal(blocks.length, 1, "expected exactly one ```frame-layout block");
  return blocks[0]!;
}

function layoutFields(): Field[] {
  const block = layoutBlock();
  const at = block.findIndex((l) => cells(l).join(",") === "field,offset,size,encoding");
  assert.ok(at >= 0, "the frame-layout block has no `field | offset | size | encoding` table");
  const fields: Field[] = [];
  for (const line of block.slice(at + 1)) {
    if (line.trim() === "") break;
    const [name, offset, size, encoding] = cells(line);
    assert.ok(name && offset && size && encoding, `bad row ${JSON.stringify(line)}`);
    assert.match(offset, /^\d+$/);
    fields.push({ name, offset: Number(offset), size: size === "length" ? "length" : Number(size), encoding });
  }
  return fields;
}

/** Reads one field from a frame as the doc says it is encoded. */
function readField(frame: Buffer, offset: number, size: number, encoding: string): number {
  switch (`${encoding}/${size}`) {
    case "u8/1":
      return frame.readUInt8(offset);
    case "u16 BE/2":
      return frame.readUInt16BE(offset);
    case "u16 LE/2":
      return frame.readUInt16LE(offset);
    case "u32 BE/4":
      return frame.readUInt32BE(offset);
    case "u32 LE/4":
      return frame.readUInt32LE(offset);
    default:
      throw new Error(`Unknown encoding "${encoding}" for ${size} bytes`);
  }
}

const samples: { kind: FrameKind; stream: number; payload: Buffer }[] = [
  { kind: FrameKind.Control, stream: 0, payload: Buffer.from('{"t":"hello","version":1}') },
  { kind: FrameKind.Data, stream: 0x01020304, payload: Buffer.alloc(0x0102, 0xab) },
  { kind: FrameKind.Data, stream: MAX_STREAM_ID - 1, payload: Buffer.alloc(0) },
  { kind: FrameKind.End, stream: 0x00a0b0c0, payload: Buffer.alloc(0) },
  { kind: FrameKind.Credit, stream: 7, payload: Buffer.from([0, 0, 1, 0]) },
];

describe("docs/PROTOCOL.md frame layout", () => {
  const fields = layoutFields();
  const fixed = fields.filter((f) => f.size !== "length");

  it("names exactly the header fields", () => {
    assert.deepEqual(
      fields.map((f) => f.name),
      ["version", "kind", "reserved", "stream id", "payload length", "payload"],
    );
  });

  it("lays the header fields end to end over FRAME_HEADER_BYTES", () => {
    let next = 0;
    for (const f of fixed) {
      assert.equal(f.offset, next, `${f.name} starts at ${f.offset}, expected ${next}`);
      next += f.size as number;
    }
    assert.equal(next, FRAME_HEADER_BYTES);
    const payload = fields.at(-1)!;
    assert.deepEqual(payload, { name: "payload", offset: FRAME_HEADER_BYTES, size: "length", encoding: "bytes" });
  });

  it("matches what encodeFrame writes, byte order included", () => {
    for (const s of samples) {
      const frame = encodeFrame(s.kind, s.stream, s.payload);
      const expected: Record<string, number> = {
        version: protocol.FRAME_VERSION,
        kind: s.kind,
        reserved: 0,
        "stream id": s.stream,
        "payload length": s.payload.length,
      };
      for (const f of fixed) {
        assert.equal(readField(frame, f.offset, f.size as number, f.encoding), expected[f.name], `${f.name} of ${JSON.stringify(s.kind)}/${s.stream}`);
      }
      assert.equal(frame.length, FRAME_HEADER_BYTES + s.payload.length);
      assert.ok(frame.subarray(FRAME_HEADER_BYTES).equals(s.payload));
    }
  });

  it("uses samples that tell the byte orders apart", () => {
    // Guards the check above: with a palindromic stream id a wrong byte order would pass.
    const frame = encodeFrame(FrameKind.Data, 0x01020304, Buffer.alloc(0x0102));
    assert.notEqual(readField(frame, 4, 4, "u32 LE"), 0x01020304);
    assert.notEqual(readField(frame, 8, 4, "u32 LE"), 0x0102);
  });

  it("draws the same fields in the diagram", () => {
    const block = layoutBlock();
    const ruler = block.find((l) => l.startsWith("offset"));
    assert.ok(ruler, "the diagram has no offset ruler");
    const border = block[block.indexOf(ruler) + 1]!;
    const labels = block[block.indexOf(ruler) + 2]!;
    const marks = [...ruler.matchAll(/\d+/g)].map((m) => ({ offset: Number(m[0]), column: m.index }));
    assert.deepEqual(
      marks.map((m) => m.offset),
      [...fixed.map((f) => f.offset), FRAME_HEADER_BYTES],
    );
    const columnPerByte = (marks[1]!.column - marks[0]!.column) / (marks[1]!.offset - marks[0]!.offset);
    for (const m of marks) {
      assert.equal(border[m.column], "+", `no "+" under offset ${m.offset}`);
      assert.equal(labels[m.column], "|", `no "|" under offset ${m.offset}`);
      assert.equal(m.column - marks[0]!.column, m.offset * columnPerByte, `offset ${m.offset} is drawn out of scale`);
    }
    fixed.forEach((f, i) => {
      const box = labels.slice(marks[i]!.column + 1, marks[i + 1]!.column);
      assert.ok(box.includes(f.name), `box ${i} of the diagram reads ${JSON.stringify(box.trim())}, expected ${f.name}`);
      if (f.encoding !== "u8") assert.ok(box.includes(f.encoding) || f.name === "reserved", `box ${f.name} does not say ${f.encoding}`);
    });
  });
});

// ---- constants, kinds, examples ----

describe("docs/PROTOCOL.md constants", () => {
  const exported = protocol as unknown as Record<string, unknown>;

  for (const marker of ["check: constants", "check: api-constants"]) {
    it(`quotes the code's values (${marker})`, () => {
      const { header, rows } = tableAfter(marker);
      assert.deepEqual(header.slice(0, 2), ["constant", "value"]);
      for (const [name, value] of rows) {
        assert.ok(name && value, "empty row");
        assert.equal(typeof exported[name], "number", `${name} is not an exported number`);
        assert.equal(Number(value), exported[name], `${name}: doc says ${value}, code says ${String(exported[name])}`);
      }
    });
  }

  it("quotes every frame and size limit", () => {
    const names = tableAfter("check: constants").rows.map((r) => r[0]);
    for (const required of [
      "FRAME_VERSION",
      "PROTOCOL_VERSION",
      "FRAME_HEADER_BYTES",
      "MAX_CONTROL_PAYLOAD",
      "MAX_DATA_PAYLOAD",
      "MAX_FRAME_BYTES",
      "INITIAL_STREAM_WINDOW",
      "CONTROL_STREAM",
      "MAX_STREAM_ID",
      "MAX_PATH_LENGTH",
      "MAX_DIR_ENTRIES",
    ]) {
      assert.ok(names.includes(required), `${required} is missing from the constants table`);
    }
  });

  it("gives each frame kind's value, streams and payload limits", () => {
    const { header, rows } = tableAfter("check: frame-kinds");
    assert.deepEqual(header.slice(0, 5), ["kind", "value", "stream ids", "min payload", "max payload"]);
    assert.deepEqual(rows.map((r) => r[0]).sort(), Object.keys(FrameKind).sort());
    for (const [name, value, streams, min, max] of rows) {
      const kind = FrameKind[name as keyof typeof FrameKind];
      assert.equal(Number(value), kind, `${name} value`);
      const [good, bad] = streams === "0" ? [0, 1] : [1, 0];
      assert.equal(streams === "0" ? "0" : `1..${MAX_STREAM_ID}`, streams, `${name} stream ids`);
      const lo = Number(min);
      const hi = Number(max);
      assert.doesNotThrow(() => encodeFrame(kind, good, Buffer.alloc(hi)), `${name} at ${hi} bytes`);
      assert.doesNotThrow(() => encodeFrame(kind, good, Buffer.alloc(lo)), `${name} at ${lo} bytes`);
      assert.throws(() => encodeFrame(kind, good, Buffer.alloc(hi + 1)), FrameError, `${name} at ${hi + 1} bytes`);
      if (lo > 0) assert.throws(() => encodeFrame(kind, good, Buffer.alloc(lo - 1)), FrameError, `${name} at ${lo - 1} bytes`);
      assert.throws(() => encodeFrame(kind, bad, Buffer.alloc(lo)), FrameError, `${name} on stream ${bad}`);
      // The decoder must refuse an oversized header on its own, before any payload.
      const header = Buffer.from(encodeFrame(kind, good, Buffer.alloc(lo)).subarray(0, FRAME_HEADER_BYTES));
      header.writeUInt32BE(hi + 1, 8);
      assert.throws(() => new FrameDecoder().push(header), FrameError);
    }
  });

  it("gives hex examples that the encoder and decoder reproduce", () => {
    const blocks = fencedBlocks("frame-example");
    const kinds = new Set<number>();
    for (const block of blocks) {
      const entry = Object.fromEntries(
        block.map((l) => {
          const [key, ...rest] = l.trim().split(/\s+/);
          return [key, rest.join(" ")];
        }),
      ) as Record<string, string>;
      const kind = FrameKind[entry["kind"] as keyof typeof FrameKind];
      assert.ok(kind, `unknown kind in example: ${entry["kind"]}`);
      const payload = Buffer.from((entry["payload"] ?? "").replace(/\s/g, ""), "hex");
      const bytes = Buffer.from((entry["bytes"] ?? "").replace(/\s/g, ""), "hex");
      const stream = Number(entry["stream"]);
      assert.equal(encodeFrame(kind, stream, payload).toString("hex"), bytes.toString("hex"));
      const decoded = new FrameDecoder().push(bytes);
      assert.equal(decoded.length, 1);
      assert.deepEqual({ ...decoded[0]!, payload: Buffer.from(decoded[0]!.payload) }, { kind, stream, payload });
      kinds.add(kind);
    }
    assert.equal(kinds.size, Object.keys(FrameKind).length, "every frame kind needs an example");
  });
});

// ---- message fields ----

/** Resolves a dotted name such as `Results.exec` or `Response.options.0` against the package's exports. */
function resolve(path: string): z.ZodMiniType {
  let v: unknown = protocol;
  for (const part of path.split(".")) {
    const here = v as (Record<string, unknown> & { def?: Record<string, unknown> }) | undefined;
    v = part === "options" && here?.[part] === undefined ? here?.def?.[part] : here?.[part];
  }
  // Message schemas use zod's mini API, engine-API schemas the classic one: both have a shape.
  const shape = (v as { shape?: unknown } | undefined)?.shape;
  assert.ok(shape !== null && typeof shape === "object", `${path} is not an object schema`);
  return v as z.ZodMiniType;
}

function fieldMarkers(): { name: string; omit: string[] }[] {
  return [...doc.matchAll(/<!-- fields: ([\w.]+)(?: omit=([\w,]+))? -->/g)].map((m) => ({
    name: m[1]!,
    omit: m[2] ? m[2].split(",") : [],
  }));
}

describe("docs/PROTOCOL.md message fields", () => {
  const markers = fieldMarkers();
  const documented = new Set<z.ZodMiniType>();

  for (const { name, omit } of markers) {
    it(`lists exactly the fields of ${name}`, () => {
      const schema = resolve(name) as z.ZodMiniObject;
      const keys = Object.keys(schema.shape);
      for (const k of omit) assert.ok(keys.includes(k), `${name} has no field ${k} to omit`);
      const { header, rows } = tableAfter(`fields: ${name}${omit.length ? ` omit=${omit.join(",")}` : ""}`);
      assert.equal(header[0], "field");
      assert.deepEqual(
        rows.map((r) => unquote(r[0]!)).sort(),
        keys.filter((k) => !omit.includes(k)).sort(),
      );
      documented.add(schema);
    });
  }

  it("documents every request op", () => {
    for (const option of Request.def.options) {
      const shape = option.shape as Record<string, z.ZodMiniType>;
      const op = (shape["op"] as z.ZodMiniLiteral<string>).def.values[0];
      assert.ok(doc.includes(`\`${op}\` —`), `no section for op ${op}`);
      const own = Object.keys(shape).filter((k) => !["t", "id", "op"].includes(k));
      if (own.length > 0) {
        assert.ok(markers.some((m) => resolve(m.name) === option), `no field table for op ${op}`);
      }
    }
  });

  it("documents every result with fields", () => {
    for (const op of Object.keys(Results) as Op[]) {
      const schema = Results[op];
      if (Object.keys(schema.shape).length === 0) continue;
      assert.ok(markers.some((m) => resolve(m.name) === schema), `no field table for the result of ${op}`);
    }
  });

  it("documents every control message", () => {
    const names = markers.map((m) => m.name);
    for (const required of ["AgentHello", "HostHello", "Response.options.0", "Response.options.1", "ExitEvent", "StreamAbort", "AgentErrorBody"]) {
      assert.ok(names.includes(required), `no field table for ${required}`);
    }
  });
});

// ---- error codes ----

describe("docs/PROTOCOL.md error codes", () => {
  it("lists every registered code with its class, and nothing else", () => {
    const { header, rows } = tableAfter("check: error-codes");
    assert.deepEqual(header.slice(0, 2), ["code", "class"]);
    assert.deepEqual(rows.map((r) => r[0]).sort(), [...ERROR_CODES].sort());
    for (const [code, cls] of rows) {
      const err = fromWire({ code: code as (typeof ERROR_CODES)[number], message: "m" });
      assert.equal(err.code, code);
      assert.equal(err.name, cls, `${code} is ${err.name} in the code`);
    }
  });
});
