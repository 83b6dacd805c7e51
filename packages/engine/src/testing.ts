/**
 * Helpers for tests in other packages (`@mvm/engine/testing`): watching a namespace sandbox's
 * workload from the host through /proc; a loopback OCI registry. Not part of the engine's API.
 */
export { findDescendants, waitWriterStalled } from "./conformance/_writer-stall.js";
/** A real OCI registry (Debian's docker-registry) on a free loopback port, for bundle and image tests. */
export { registrySkipReason, startRegistry, type StartRegistryOptions, type TestRegistry } from "./oci/_test/registry.js";
