/**
 * The chain-signed audit log: entry schema, host signing key, writer and offline verifier.
 */
export {
  AuditEntrySchema,
  AuditEventSchema,
  DenialReason,
  GENESIS_PREV,
  MAX_ENTRY_BYTES,
  argvDigest,
  entryHash,
  entryLine,
  sha256Hex,
  signEntry,
  signatureValid,
} from "./entry.js";
export type { AuditEntry, AuditEvent, AuditEventType, UnsignedEntry } from "./entry.js";
export { HOST_KEY_FILE, hostKeyPath, loadHostKey, loadOrCreateHostKey, parsePublicKey, publicKeyPem, publicKeyRaw } from "./keys.js";
export type { HostKey } from "./keys.js";
export { AUDIT_FILE, AuditLog, AuditLogCorruptError, PIPELINED_SYNC_MS, auditDir, auditFilePath, openStateAuditLog } from "./log.js";
export type { AppendOptions, AuditLogOptions, AuditLogStats, AuditReceipt } from "./log.js";
export type { AuditFailureCode } from "./line.js";
export { verifyAuditFile } from "./verify.js";
export type { BadEntry, VerifyOptions, VerifyResult } from "./verify.js";
export { findAuditEntry, tailAuditEntries } from "./read.js";
export type { StoredEntry } from "./read.js";
