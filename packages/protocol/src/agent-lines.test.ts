import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { AGENT_READY_LINE, AGENT_RESUME_LINE, AGENT_START_LINE, MAX_AGENT_LINE_BYTES, agentLineKind } from "./agent-lines.js";

describe("agent lines", () => {
  it("are distinct, end in a newline and fit the line limit", () => {
    const lines = [AGENT_READY_LINE, AGENT_START_LINE, AGENT_RESUME_LINE];
    assert.equal(new Set(lines).size, lines.length);
    for (const line of lines) {
      assert.ok(line.endsWith("\n") && line.indexOf("\n") === line.length - 1, JSON.stringify(line));
      assert.ok(Buffer.byteLength(line) <= MAX_AGENT_LINE_BYTES);
    }
  });

  it("can never be read as the start of a frame (a frame starts with version byte 1)", () => {
    for (const line of [AGENT_READY_LINE, AGENT_START_LINE, AGENT_RESUME_LINE]) assert.notEqual(line.charCodeAt(0), 1);
  });

  it("tells the two lines a waiting agent accepts from anything else", () => {
    assert.equal(agentLineKind(AGENT_START_LINE), "start");
    assert.equal(agentLineKind(AGENT_RESUME_LINE), "resume");
    for (const other of [AGENT_READY_LINE, "mvm-agent start", "mvm-agent start\r\n", "MVM-AGENT START\n", "", "\n"]) {
      assert.equal(agentLineKind(other), undefined, JSON.stringify(other));
    }
  });
});
