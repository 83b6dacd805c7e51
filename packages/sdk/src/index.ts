/**
 * @mvm/sdk: run untrusted code in isolated sandboxes, through a daemon or an engine embedded in
 * this process.
 */
export { Sandbox } from "./sandbox.js";
export type { SandboxCreateOptions, SandboxConnectOptions, SandboxForkOptions, SandboxPlanOptions, SandboxSnapshotOptions } from "./sandbox.js";
export { Snapshot } from "./snapshot.js";
export type { SnapshotConnectOptions, SnapshotRef } from "./snapshot.js";
export { Bundle } from "./bundle.js";
export type { BundleConnectOptions, BundlePullOptions } from "./bundle.js";
export { Commands, CommandHandle, commandFailed, DEFAULT_COMMAND_TIMEOUT_SECONDS, DEFAULT_MAX_OUTPUT_BYTES } from "./commands.js";
export type { CommandResult, ConnectOptions, RunOptions, StartOptions } from "./commands.js";
export { Files, DEFAULT_MAX_READ_BYTES } from "./files.js";
export { SandboxNetworkApi } from "./network.js";
export type { NetworkEventsOptions } from "./network.js";
export { MAX_FORK_COUNT, MAX_SNAPSHOT_TTL_SECONDS } from "@mvm/protocol";
export { NetworkPolicy, SecretRef, requestFromPlan, CONTAINER_TIER_CAVEATS, TIER_ORDER, callerSettingsFromEnv, tierAtLeast } from "@mvm/protocol";
export { imageCommand } from "@mvm/protocol";
export type { CallerSettings } from "@mvm/protocol";
export type {
  ConnectionEvent,
  NetworkEvent,
  NetworkEventsPage,
  NetworkPolicyJson,
  NetworkRule,
  PolicyChangedEvent,
  PortSpec,
  SecretMeta,
  SecretPosture,
  SecretRefJson,
} from "@mvm/protocol";
export type { ManyFile, ReadOptions, WriteData, WriteOptions, WriteResult } from "./files.js";
export { extractTarToDir, packLocalDir } from "./local-tree.js";
export { FileWatcher, DEFAULT_MAX_QUEUED_EVENTS } from "./watch.js";
export type { WatchEvent, WatchOptions } from "./watch.js";

export { analyzeSource, analyzeSourceText, MAX_SOURCE_BYTES } from "./static-analysis.js";
export type { SourceLocation, StaticAnalysis, StaticDiagnostic, StaticFork, StaticWorkload } from "./static-analysis.js";
export { RecordingEngine, RecordingSchema, RECORD_FILE_ENV, readRecording } from "./recording.js";
export type { RecordedCommand, RecordedOrigin, RecordedSnapshot, RecordedWorkload, Recording } from "./recording.js";
export { connectEngine } from "./connect.js";
export type { ConnectEngineOptions, ConnectionOptions, EngineConnection, EngineMode } from "./connect.js";
export { DaemonClient } from "./daemon-client.js";
export type { DaemonClientOptions } from "./daemon-client.js";
export { EmbeddedEngine } from "./embedded.js";
export { DAEMON_SOCKET_ENV, defaultSocketPath, resolveSocketPath } from "./socket-path.js";

export {
  AbortedError,
  AdmissionError,
  AlreadyExistsError,
  CleanupError,
  CommandExitError,
  ErrorCode,
  InternalError,
  InvalidArgumentError,
  MvmError,
  NotFoundError,
  PermissionDeniedError,
  PolicyDeniedError,
  SnapshotMismatchError,
  SandboxCrashedError,
  SandboxPausedError,
  TimeoutError,
  TransportError,
  UnsupportedCapabilityError,
  isErrorCode,
} from "@mvm/protocol";
export type {
  AdmissionProfile,
  AuditReceiptRef,
  ExecutionPlan,
  SignedPlan,
  WorkloadCommand,
  WorkloadIR,
  BackendName,
  BackendReport,
  CallOptions,
  CreateSandboxRequest,
  DirListingResult,
  EndReason,
  EngineApi,
  ExecApiRequest,
  ExecHandlers,
  ExecStarted,
  ExitInfo,
  FileInfo,
  FileReadStream,
  FileType,
  HealthInfo,
  ImageInfo,
  KillSignal,
  MvmErrorOptions,
  ProcessInfo,
  ProgressEvent,
  Receipt,
  Resources,
  SandboxId,
  SandboxInfo,
  SandboxState,
  Sha256Digest,
  SnapshotId,
  SnapshotInfo,
  SnapshotRetention,
  Tier,
  WireError,
  WriteFileOptions,
} from "@mvm/protocol";

export { fn, MvmFunction, FunctionSession } from "./fn/function.js";
export type { FunctionCallOptions, FunctionOptions, MapOptions } from "./fn/function.js";
export { FunctionDefinitionError } from "./fn/bundle.js";
export { MissingPackageError } from "./_internal/optional-package.js";
export type { FunctionBundle } from "./fn/bundle.js";
export { appendFnLog, readFnLog, fnLogDir, FN_LOG_DIR_ENV } from "./fn/operator-log.js";
export type { FnLogEntry } from "./fn/operator-log.js";
export { FunctionError, FnCodecError, FUNCTION_ID_PATTERN, DEFAULT_FN_LIMITS, checkFunctionId, looksSecretName } from "@mvm/protocol";
export type { FnFormat, FnLimits, FnMode, FnErrorKind } from "@mvm/protocol";
