/**
 * The raw lines of the host–agent channel that are not frames (docs/PROTOCOL.md, sections 1.2
 * and 1.12). The agent reads or writes one of them only at two points: before its first hello
 * (`--await-start`) and after it answered `quiesce`. Kept in a module without schemas so the
 * agent's startup code can import it without loading zod.
 */

/** The agent is loaded and waits for a start line (the VM backend saves the guest here). */
export const AGENT_READY_LINE = "mvm-agent ready\n";
/**
 * A new host speaks to the agent: say a fresh hello. On a quiesced agent it also means the old
 * host is gone (a restored copy), so the old session's state is dropped.
 */
export const AGENT_START_LINE = "mvm-agent start\n";
/** The host that quiesced the agent carries on with the same session. */
export const AGENT_RESUME_LINE = "mvm-agent resume\n";
/** Longest line the agent reads before deciding it is none of the above, newline included, in bytes. */
export const MAX_AGENT_LINE_BYTES = 64;

/** The line a waiting agent may receive, as read: "start", "resume", or undefined for anything else. */
export function agentLineKind(line: string): "start" | "resume" | undefined {
  if (line === AGENT_START_LINE) return "start";
  if (line === AGENT_RESUME_LINE) return "resume";
  return undefined;
}
