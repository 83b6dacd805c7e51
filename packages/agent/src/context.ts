/**
 * What request handlers get from the session.
 */
import type { ProcessTable } from "./exec.js";
import type { Link } from "./link.js";

export interface AgentContext {
  readonly link: Link;
  readonly procs: ProcessTable;
  /**
   * Registers a synchronous cleanup (e.g. unlinking a temporary file) to run if the agent exits
   * while it is still registered. Returns the function that unregisters it.
   */
  onExit(cleanup: () => void): () => void;
}

export interface RequestContext extends AgentContext {
  /** Runs `fn` right after the successful response to this request has been sent. */
  afterResponse(fn: () => void): void;
}
