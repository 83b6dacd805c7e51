/** The daemon's answer schemas (shared with the daemon through @mvm/protocol). */
export {
  BuildStreamLine,
  CreateStreamLine,
  HealthInfoSchema,
  ImageInfoSchema,
  ImageListSchema,
  ProgressEventSchema,
  SandboxListSchema,
  WriteResultSchema,
  DirListing,
  ExecEvent,
  FileInfo,
  ProcessList,
  SandboxInfo,
  NetworkEventsPageSchema,
  SecretListSchema,
  SecretMetaSchema,
} from "@mvm/protocol";
