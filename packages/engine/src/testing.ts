/**
 * Helpers for tests in other packages (`@mvm/engine/testing`): watching a namespace sandbox's
 * workload from the host through /proc. Not part of the engine's API.
 */
export { findDescendants, waitWriterStalled } from "./conformance/_writer-stall.js";
