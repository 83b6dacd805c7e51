/**
 * Strict parser of the report `veritysetup format` prints on stdout:
 *
 *   VERITY header information for <path>
 *   UUID:                <empty with --no-superblock>
 *   Hash type:           1
 *   Data blocks:         2048
 *   Data block size:     4096
 *   Hash blocks:         17
 *   Hash block size:     4096
 *   Hash algorithm:      sha256
 *   Salt:                <hex>
 *   Root hash:           <hex>
 *   Hash device size:    69632 [bytes]     (only when the hash tree is in its own file)
 *
 * Every field except UUID and Hash device size is required, no field may repeat, no other field is accepted and every
 * value is range-checked. Anything else is an AdmissionError quoting the offending line.
 */
import { AdmissionError } from "@mvm/protocol";

/** What `veritysetup format` reported, field by field. */
export interface VerityFormatReport {
  /** dm-verity hash format; mvm uses 1 (the current format). */
  hashType: 1;
  /** Number of data blocks the hash tree covers. */
  dataBlocks: number;
  dataBlockSizeBytes: number;
  /** Number of hash-tree blocks written (not counting a superblock). */
  hashBlocks: number;
  hashBlockSizeBytes: number;
  hashAlgorithm: "sha256";
  /** Lower-case hex. */
  saltHex: string;
  /** Lower-case hex, 64 characters for sha256. */
  rootHashHex: string;
  /** Size of a separate hash file, when veritysetup reports it. */
  hashDeviceSizeBytes?: number;
}

/** Largest report accepted, in characters; the real one is under 1 KiB. */
export const MAX_FORMAT_REPORT_CHARS = 4096;
/** Largest salt veritysetup accepts, in bytes. */
export const MAX_SALT_BYTES = 256;

const HEADER_PREFIX = "VERITY header information for ";
const LINE = /^([A-Za-z][A-Za-z ]{0,30}):[ \t]*(.*)$/;
const DECIMAL = /^[1-9][0-9]{0,15}$/;
const HEX = /^(?:[0-9a-f]{2})+$/;

const FIELDS = {
  "UUID": "uuid",
  "Hash type": "hashType",
  "Data blocks": "dataBlocks",
  "Data block size": "dataBlockSize",
  "Hash blocks": "hashBlocks",
  "Hash block size": "hashBlockSize",
  "Hash algorithm": "hashAlgorithm",
  "Salt": "salt",
  "Root hash": "rootHash",
  "Hash device size": "hashDeviceSize",
} as const;
type FieldKey = (typeof FIELDS)[keyof typeof FIELDS];

function fail(message: string): never {
  throw new AdmissionError(`Unexpected veritysetup format output: ${message}`);
}

function quoteLine(line: string): string {
  return JSON.stringify(line.length > 80 ? `${line.slice(0, 80)}…` : line);
}

function positiveInt(name: string, value: string): number {
  if (!DECIMAL.test(value)) fail(`${name} ${JSON.stringify(value)} is not a positive integer`);
  const n = Number(value);
  if (!Number.isSafeInteger(n)) fail(`${name} ${JSON.stringify(value)} is out of range`);
  return n;
}

function blockSize(name: string, value: string): number {
  const n = positiveInt(name, value);
  // dm-verity accepts powers of two from 512 bytes up to the page size; mvm allows up to 64 KiB.
  if (n < 512 || n > 65536 || (n & (n - 1)) !== 0) fail(`${name} ${JSON.stringify(value)} is not a power of two from 512 to 65536`);
  return n;
}

/** Parses `veritysetup format` stdout; throws AdmissionError on anything unexpected. */
export function parseVerityFormatReport(stdout: string): VerityFormatReport {
  if (stdout.length > MAX_FORMAT_REPORT_CHARS) fail(`${stdout.length} characters is more than ${MAX_FORMAT_REPORT_CHARS}`);
  const lines = stdout.split("\n").filter((line) => line.trim().length > 0);
  const header = lines.shift();
  if (header === undefined || !header.startsWith(HEADER_PREFIX)) fail(`first line ${quoteLine(header ?? "")} is not the header`);

  const values = new Map<FieldKey, string>();
  for (const line of lines) {
    const match = LINE.exec(line);
    if (!match) fail(`line ${quoteLine(line)} is not "Field: value"`);
    const label = (match[1] ?? "").trim();
    const key = (FIELDS as Record<string, FieldKey | undefined>)[label];
    if (key === undefined) fail(`unknown field ${quoteLine(label)}`);
    if (values.has(key)) fail(`field ${quoteLine(label)} appears twice`);
    values.set(key, (match[2] ?? "").trim());
  }
  const need = (key: FieldKey, label: string): string => {
    const value = values.get(key);
    if (value === undefined) fail(`field "${label}" is missing`);
    return value;
  };

  const hashType = need("hashType", "Hash type");
  if (hashType !== "1") fail(`hash type ${JSON.stringify(hashType)} is not 1`);
  const hashAlgorithm = need("hashAlgorithm", "Hash algorithm");
  if (hashAlgorithm !== "sha256") fail(`hash algorithm ${JSON.stringify(hashAlgorithm)} is not sha256`);
  const saltHex = need("salt", "Salt");
  if (!HEX.test(saltHex) || saltHex.length > MAX_SALT_BYTES * 2) fail(`salt ${quoteLine(saltHex)} is not lower-case hex of 1 to ${MAX_SALT_BYTES} bytes`);
  const rootHashHex = need("rootHash", "Root hash");
  if (!/^[0-9a-f]{64}$/.test(rootHashHex)) fail(`root hash ${quoteLine(rootHashHex)} is not 64 lower-case hex digits`);

  const hashDeviceSize = values.get("hashDeviceSize");
  let hashDeviceSizeBytes: number | undefined;
  if (hashDeviceSize !== undefined) {
    const sized = /^([0-9]+) \[bytes\]$/.exec(hashDeviceSize);
    if (!sized) fail(`hash device size ${quoteLine(hashDeviceSize)} is not "<n> [bytes]"`);
    hashDeviceSizeBytes = positiveInt("hash device size", sized[1] ?? "");
  }

  return {
    ...(hashDeviceSizeBytes === undefined ? {} : { hashDeviceSizeBytes }),
    hashType: 1,
    dataBlocks: positiveInt("data blocks", need("dataBlocks", "Data blocks")),
    dataBlockSizeBytes: blockSize("data block size", need("dataBlockSize", "Data block size")),
    hashBlocks: positiveInt("hash blocks", need("hashBlocks", "Hash blocks")),
    hashBlockSizeBytes: blockSize("hash block size", need("hashBlockSize", "Hash block size")),
    hashAlgorithm: "sha256",
    saltHex,
    rootHashHex,
  };
}
