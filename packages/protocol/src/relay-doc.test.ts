/** docs/PROTOCOL.md part 3 must describe the relay frames the codec produces. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  RELAY_FRAME_HEADER_BYTES,
  RELAY_INITIAL_WINDOW,
  RELAY_MAX_DATA_PAYLOAD,
  RELAY_MAX_RESET_REASON,
  RELAY_MAX_STREAMS,
  RelayFrameKind,
  encodeRelayFrame,
} from "./relay-mux.js";

const doc = readFileSync(new URL("../../../docs/PROTOCOL.md", import.meta.url), "utf8");

function tableAfter(marker: string): string[][] {
  const at = doc.indexOf(`<!-- ${marker} -->`);
  assert.ok(at >= 0, `no "${marker}" table`);
  const lines = doc.slice(at).split("\n").slice(1);
  const rows: string[][] = [];
  for (const line of lines) {
    if (!line.startsWith("|")) break;
    rows.push(line.split("|").slice(1, -1).map((c) => c.trim()));
  }
  return rows.slice(2);
}

describe("docs/PROTOCOL.md relay channel", () => {
  it("lists every frame kind with its wire value", () => {
    const rows = tableAfter("check: relay-kinds");
    assert.deepEqual(Object.fromEntries(rows.map((r) => [r[0], Number(r[1])])), { ...RelayFrameKind });
  });

  it("states the constants the codec uses", () => {
    const rows = tableAfter("check: relay-constants");
    assert.deepEqual(Object.fromEntries(rows.map((r) => [r[0], Number(r[1])])), {
      RELAY_FRAME_HEADER_BYTES,
      RELAY_MAX_DATA_PAYLOAD,
      RELAY_MAX_RESET_REASON,
      RELAY_INITIAL_WINDOW,
      RELAY_MAX_STREAMS,
    });
  });

  it("lays the header out as the diagram shows: kind, flags, reserved u16, stream u32 BE, length u32 BE", () => {
    const frame = encodeRelayFrame(RelayFrameKind.Data, 0x01020305, Buffer.from("abc"));
    assert.equal(frame.length, RELAY_FRAME_HEADER_BYTES + 3);
    assert.deepEqual([...frame.subarray(0, 12)], [2, 0, 0, 0, 1, 2, 3, 5, 0, 0, 0, 3]);
    assert.ok(doc.includes("|  kind  | flags 0|  reserved (0)   |          stream id (u32 BE)       |      payload length (u32 BE)      |"));
  });
});
