/**
 * The agent's opening frame, encoded without loading the schema library so it can be sent
 * before anything heavy is imported. `session.test.ts` decodes it with the protocol's codec.
 */

/** Identifies this agent build in its hello. */
export const AGENT_NAME = "mvm-agent/0.1.0";
/** Protocol versions this agent speaks. */
export const AGENT_VERSIONS: readonly number[] = [1];

const FRAME_VERSION = 1;
const KIND_CONTROL = 1;
const HEADER_BYTES = 12;

/** The `AgentHello` control frame, ready to write to the channel. */
export function helloFrame(): Buffer {
  const payload = Buffer.from(JSON.stringify({ t: "hello", versions: AGENT_VERSIONS, agent: AGENT_NAME }), "utf8");
  const frame = Buffer.alloc(HEADER_BYTES + payload.length);
  frame.writeUInt8(FRAME_VERSION, 0);
  frame.writeUInt8(KIND_CONTROL, 1);
  frame.writeUInt32BE(0, 4);
  frame.writeUInt32BE(payload.length, 8);
  payload.copy(frame, HEADER_BYTES);
  return frame;
}
