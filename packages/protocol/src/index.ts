export {
  FRAME_VERSION,
  FRAME_HEADER_BYTES,
  FrameKind,
  MAX_CONTROL_PAYLOAD,
  MAX_DATA_PAYLOAD,
  MAX_FRAME_BYTES,
  INITIAL_STREAM_WINDOW,
  MAX_STREAM_ID,
  CONTROL_STREAM,
  FrameError,
  FrameDecoder,
  checkHeader,
  encodeFrame,
  encodeCredit,
  decodeCredit,
} from "./frame.js";
export type { Frame } from "./frame.js";
export * from "./errors.js";
export * from "./messages.js";
export * from "./agent-lines.js";
export { StrictJsonError, parseJsonStrict } from "./json-strict.js";
export type { StrictJsonFault, StrictJsonOptions } from "./json-strict.js";
export { canonicalJson } from "./canonical.js";
export * from "./api.js";
export * from "./snapshot-api.js";
export * from "./pool-api.js";
export * from "./bundle-api.js";
export { looksSecretName, nameWords } from "./secret-names.js";
export * from "./api-responses.js";
export type * from "./engine-api.js";
export { imageCommand } from "./engine-api.js";
export { isPromiseLike } from "./promise-like.js";
export * from "./network-policy.js";
export * from "./network-event.js";
export * from "./egress.js";
export * from "./relay-mux.js";
export * from "./secret-ref.js";
export * from "./plan.js";
export * from "./limits.js";
export * from "./tier.js";
export * from "./fn.js";
export { FnCodecError, asCallPayload, decodeFnValue, encodeFnValue, scanMsgpack } from "./fn-codec.js";
export type { FnCodecFault, FnCodecLimits } from "./fn-codec.js";
export * from "./pool-api.js";
export { lenientSchema } from "./lenient.js";
export { openApiDocument } from "./openapi.js";
export { MAX_TREE_BYTES, MAX_TREE_ENTRIES, normalizeTarPath, readTar, tarEnd, tarHeader, tarPadding } from "./tar.js";
export type { TarEntry, TarEntryType, TarLimits, TarReadEntry } from "./tar.js";
export { TreeWriteResult, treeLimits } from "./tree-api.js";
export type { TreeOptions } from "./tree-api.js";
export { LogCursor, LogSource, MAX_LOG_LINES, MAX_LOG_LINE_CHARS, SandboxLogLine, SandboxLogs } from "./logs-api.js";
export * from "./image-provenance.js";
