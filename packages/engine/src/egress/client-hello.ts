/**
 * A bounded reader for the TLS ClientHello a sandbox sends through the egress gateway, so the
 * gateway can compare its SNI with the allowed host before any byte goes upstream.
 *
 * The input is hostile: every length is checked against its container, nothing is read past the
 * buffer, the hello is capped at {@link MAX_CLIENT_HELLO_BYTES} over at most
 * {@link MAX_CLIENT_HELLO_RECORDS} records, and anything ambiguous (two names, a duplicate
 * extension, bytes after the hello in its last record) is refused rather than guessed at.
 */
import type { Readable } from "node:stream";
import { AbortedError, InvalidArgumentError, TimeoutError, TransportError } from "@mvm/protocol";

/** Cap on a ClientHello as sent on the wire, record headers included. */
export const MAX_CLIENT_HELLO_BYTES = 16 * 1024;
/** Cap on the number of TLS records one ClientHello may span. */
export const MAX_CLIENT_HELLO_RECORDS = 4;

const RECORD_HEADER_BYTES = 5;
const HANDSHAKE_HEADER_BYTES = 4;
const CONTENT_TYPE_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const MAX_RECORD_PAYLOAD_BYTES = 1 << 14;
const MAX_HOST_NAME_BYTES = 253;
const MAX_LABEL_BYTES = 63;

const EXT_SERVER_NAME = 0x0000;
const EXT_ALPN = 0x0010;
const EXT_SUPPORTED_VERSIONS = 0x002b;
const EXT_ENCRYPTED_CLIENT_HELLO = 0xfe0d;
const EXT_ENCRYPTED_SERVER_NAME = 0xffce;

const TLS_VERSIONS = { 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3" } as const;
/** A protocol version, named as `tls.TLSSocket#getProtocol()` names it. */
export type TlsVersion = (typeof TLS_VERSIONS)[keyof typeof TLS_VERSIONS];

/** What a complete, well-formed ClientHello offers. */
export interface ClientHello {
  /** The server_name host_name, ASCII, lower-cased, trailing dot removed; undefined when the hello carries no server_name. */
  serverName: string | undefined;
  /** ALPN protocol names in the client's order, one character per byte (latin1); empty when absent. */
  alpn: string[];
  /** True when the hello carries encrypted_client_hello (0xfe0d) or the older encrypted_server_name (0xffce). */
  ech: boolean;
  /** The highest known version offered: from supported_versions when present, else legacy_version. */
  tlsVersion: TlsVersion;
  /** Wire bytes of the records that carry the hello, headers included; they start at offset 0. */
  helloBytes: number;
}

/**
 * The verdict on a buffer that holds the first bytes of a connection.
 * `need-more`: a prefix of a possible hello; `needBytes` (at least 1) are still missing from the
 * record being read (its header, or its body once the header is known).
 */
export type ClientHelloParse =
  | { kind: "need-more"; needBytes: number }
  | ({ kind: "hello" } & ClientHello)
  | { kind: "not-tls" }
  | { kind: "invalid"; reason: string };

/** Internal signal of a malformed hello; parseClientHello turns it into `{ kind: "invalid" }`. */
class Malformed {
  constructor(readonly reason: string) {}
}

/**
 * Parses the ClientHello at the start of `buf`, reassembling it from up to four handshake records.
 * Never throws on any input; never reads past `buf`.
 *
 * @example
 * const verdict = parseClientHello(firstBytes);
 * if (verdict.kind === "hello" && verdict.serverName === "api.example.com" && !verdict.ech) forward();
 */
export function parseClientHello(buf: Uint8Array): ClientHelloParse {
  const prefix = firstRecordPrefix(buf);
  if (prefix !== undefined) return prefix;
  try {
    const framed = reassemble(buf);
    if (framed.kind !== "complete") return framed;
    return { kind: "hello", ...parseBody(framed.message), helloBytes: framed.helloBytes };
  } catch (err) {
    if (err instanceof Malformed) return { kind: "invalid", reason: err.reason };
    throw err;
  }
}

/** Decides not-tls (or need-more) from the first record's type and version bytes. */
function firstRecordPrefix(buf: Uint8Array): ClientHelloParse | undefined {
  if (buf.length === 0) return { kind: "need-more", needBytes: RECORD_HEADER_BYTES };
  if (buf[0] !== CONTENT_TYPE_HANDSHAKE) return { kind: "not-tls" };
  if (buf.length >= 2 && buf[1] !== 3) return { kind: "not-tls" };
  return undefined;
}

type Framing = { kind: "complete"; message: Uint8Array; helloBytes: number } | { kind: "need-more"; needBytes: number };

/** Walks the record layer and joins the handshake fragments once the whole hello is present. */
function reassemble(buf: Uint8Array): Framing {
  const fragments: Uint8Array[] = [];
  let offset = 0;
  let payloadBytes = 0;
  let messageBytes: number | undefined;
  for (;;) {
    if (fragments.length === MAX_CLIENT_HELLO_RECORDS) {
      throw new Malformed(`ClientHello spans more than ${MAX_CLIENT_HELLO_RECORDS} records`);
    }
    const available = buf.length - offset;
    checkRecordHeaderPrefix(buf, offset, available);
    if (available < RECORD_HEADER_BYTES) return { kind: "need-more", needBytes: RECORD_HEADER_BYTES - available };
    const length = ((buf[offset + 3] ?? 0) << 8) | (buf[offset + 4] ?? 0);
    if (length === 0) throw new Malformed(`record at offset ${offset} is empty`);
    if (length > MAX_RECORD_PAYLOAD_BYTES) throw new Malformed(`record at offset ${offset} declares ${length} bytes, over ${MAX_RECORD_PAYLOAD_BYTES}`);
    const recordEnd = offset + RECORD_HEADER_BYTES + length;
    if (recordEnd > MAX_CLIENT_HELLO_BYTES) throw new Malformed(`ClientHello records exceed ${MAX_CLIENT_HELLO_BYTES} bytes`);
    const fragmentStart = offset + RECORD_HEADER_BYTES;
    // The handshake header is checked as soon as its bytes are visible, even in a partial record.
    const visible = buf.subarray(fragmentStart, Math.min(recordEnd, buf.length));
    messageBytes ??= handshakeLength(fragments, visible, fragments.length);
    if (messageBytes !== undefined && payloadBytes + length > messageBytes) {
      throw new Malformed(`record at offset ${offset} carries ${payloadBytes + length - messageBytes} bytes after the ClientHello`);
    }
    if (buf.length < recordEnd) return { kind: "need-more", needBytes: recordEnd - buf.length };
    fragments.push(visible);
    payloadBytes += length;
    offset = recordEnd;
    if (messageBytes === undefined) continue;
    if (payloadBytes === messageBytes) return { kind: "complete", message: join(fragments, messageBytes), helloBytes: offset };
  }
}

/** Checks whichever of a record header's type and version bytes are present. */
function checkRecordHeaderPrefix(buf: Uint8Array, offset: number, available: number): void {
  if (available >= 1 && buf[offset] !== CONTENT_TYPE_HANDSHAKE) {
    throw new Malformed(`record of type ${buf[offset]} at offset ${offset} interrupts the ClientHello`);
  }
  if (available >= 2 && buf[offset + 1] !== 3) throw new Malformed(`record at offset ${offset} has major version ${buf[offset + 1]}`);
  if (available >= 3 && (buf[offset + 2] ?? 0) > 4) throw new Malformed(`record at offset ${offset} has minor version ${buf[offset + 2]}`);
}

/**
 * Reads the handshake header across the fragments seen so far plus the visible part of the
 * current record; returns the whole message's length once all four header bytes are present.
 */
function handshakeLength(done: readonly Uint8Array[], current: Uint8Array, records: number): number | undefined {
  const header: number[] = [];
  for (const part of [...done, current]) {
    for (let i = 0; i < part.length && header.length < HANDSHAKE_HEADER_BYTES; i++) header.push(part[i] ?? 0);
  }
  if (header.length >= 1 && header[0] !== HANDSHAKE_CLIENT_HELLO) throw new Malformed(`handshake message type ${header[0]} is not ClientHello`);
  if (header.length < HANDSHAKE_HEADER_BYTES) return undefined;
  const messageBytes = HANDSHAKE_HEADER_BYTES + (((header[1] ?? 0) << 16) | ((header[2] ?? 0) << 8) | (header[3] ?? 0));
  if (messageBytes + RECORD_HEADER_BYTES * (records + 1) > MAX_CLIENT_HELLO_BYTES) {
    throw new Malformed(`ClientHello declares ${messageBytes} bytes, over the ${MAX_CLIENT_HELLO_BYTES}-byte cap`);
  }
  return messageBytes;
}

function join(fragments: readonly Uint8Array[], totalBytes: number): Uint8Array {
  if (fragments.length === 1 && fragments[0] !== undefined) return fragments[0];
  const message = new Uint8Array(totalBytes);
  let at = 0;
  for (const part of fragments) {
    message.set(part, at);
    at += part.length;
  }
  return message;
}

/** A cursor over `[start, end)` of one buffer; every read is checked against `end`. */
class Cursor {
  private pos: number;
  constructor(private readonly bytes: Uint8Array, start: number, private readonly end: number, private readonly what: string) {
    this.pos = start;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  u8(field: string): number {
    this.need(1, field);
    return this.bytes[this.pos++] ?? 0;
  }

  u16(field: string): number {
    this.need(2, field);
    const value = ((this.bytes[this.pos] ?? 0) << 8) | (this.bytes[this.pos + 1] ?? 0);
    this.pos += 2;
    return value;
  }

  skip(count: number, field: string): void {
    this.need(count, field);
    this.pos += count;
  }

  /** A length-prefixed vector of `prefixBytes` (1 or 2) length bytes, sized within [min, max]. */
  vector(prefixBytes: 1 | 2, field: string, min: number, max: number): Cursor {
    const length = prefixBytes === 1 ? this.u8(field) : this.u16(field);
    if (length < min || length > max) throw new Malformed(`${field} length ${length} is outside ${min}..${max}`);
    this.need(length, field);
    const inner = new Cursor(this.bytes, this.pos, this.pos + length, field);
    this.pos += length;
    return inner;
  }

  /** The rest of this cursor's range as a view. */
  rest(): Uint8Array {
    const view = this.bytes.subarray(this.pos, this.end);
    this.pos = this.end;
    return view;
  }

  expectEnd(): void {
    if (this.pos !== this.end) throw new Malformed(`${this.what} has ${this.end - this.pos} trailing bytes`);
  }

  private need(count: number, field: string): void {
    if (this.end - this.pos < count) throw new Malformed(`${field} runs past the end of ${this.what}`);
  }
}

/** Parses a ClientHello handshake message (header included) whose length is already verified. */
function parseBody(message: Uint8Array): Omit<ClientHello, "helloBytes"> {
  const body = new Cursor(message, HANDSHAKE_HEADER_BYTES, message.length, "ClientHello");
  const legacyVersion = body.u16("legacy_version");
  body.skip(32, "random");
  body.vector(1, "session_id", 0, 32);
  const suites = body.vector(2, "cipher_suites", 2, 0xfffe);
  if (suites.remaining % 2 !== 0) throw new Malformed(`cipher_suites length ${suites.remaining} is odd`);
  body.vector(1, "compression_methods", 1, 0xff);
  let serverName: string | undefined;
  let alpn: string[] = [];
  let ech = false;
  let offered: number[] | undefined;
  if (body.remaining > 0) {
    const extensions = body.vector(2, "extensions", 0, 0xffff);
    body.expectEnd();
    const seen = new Set<number>();
    while (extensions.remaining > 0) {
      const type = extensions.u16("extension type");
      const data = extensions.vector(2, `extension ${type}`, 0, 0xffff);
      if (seen.has(type)) throw new Malformed(`extension ${type} appears twice`);
      seen.add(type);
      if (type === EXT_SERVER_NAME) serverName = parseServerName(data);
      else if (type === EXT_ALPN) alpn = parseAlpn(data);
      else if (type === EXT_SUPPORTED_VERSIONS) offered = parseSupportedVersions(data);
      else if (type === EXT_ENCRYPTED_CLIENT_HELLO || type === EXT_ENCRYPTED_SERVER_NAME) ech = true;
    }
  }
  return { serverName, alpn, ech, tlsVersion: highestVersion(offered ?? [legacyVersion]) };
}

/** server_name: exactly one entry, of type host_name. */
function parseServerName(data: Cursor): string {
  const list = data.vector(2, "server_name list", 1, 0xffff);
  data.expectEnd();
  const nameType = list.u8("server_name type");
  if (nameType !== 0) throw new Malformed(`server_name entry has type ${nameType}, not host_name`);
  const name = list.vector(2, "host_name", 1, 0xffff).rest();
  if (list.remaining > 0) throw new Malformed("server_name has more than one entry");
  return hostName(name);
}

/** Validates a host_name as ASCII letters, digits, '-', '_' in dot-separated labels; lower-cases it. */
function hostName(bytes: Uint8Array): string {
  const end = bytes[bytes.length - 1] === 0x2e ? bytes.length - 1 : bytes.length;
  if (end === 0) throw new Malformed("host_name is empty");
  if (end > MAX_HOST_NAME_BYTES) throw new Malformed(`host_name is ${end} bytes, over ${MAX_HOST_NAME_BYTES}`);
  let name = "";
  let label = 0;
  for (let i = 0; i < end; i++) {
    let c = bytes[i] ?? 0;
    if (c === 0x2e) {
      if (label === 0) throw new Malformed(`host_name has an empty label at byte ${i}`);
      label = 0;
    } else {
      const letter = (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
      const other = (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
      if (!letter && !other) throw new Malformed(`host_name has byte 0x${c.toString(16).padStart(2, "0")} at offset ${i}`);
      if (++label > MAX_LABEL_BYTES) throw new Malformed(`host_name has a label over ${MAX_LABEL_BYTES} bytes`);
      if (c <= 0x5a && letter) c += 0x20;
    }
    name += String.fromCharCode(c);
  }
  if (label === 0) throw new Malformed("host_name ends with an empty label");
  return name;
}

/** application_layer_protocol_negotiation: a non-empty list of non-empty names. */
function parseAlpn(data: Cursor): string[] {
  const list = data.vector(2, "ALPN list", 2, 0xffff);
  data.expectEnd();
  const names: string[] = [];
  while (list.remaining > 0) names.push(Buffer.from(list.vector(1, "ALPN protocol", 1, 0xff).rest()).toString("latin1"));
  return names;
}

function parseSupportedVersions(data: Cursor): number[] {
  const list = data.vector(1, "supported_versions list", 2, 0xfe);
  data.expectEnd();
  if (list.remaining % 2 !== 0) throw new Malformed(`supported_versions length ${list.remaining} is odd`);
  const versions: number[] = [];
  while (list.remaining > 0) versions.push(list.u16("supported version"));
  return versions;
}

/** The highest known version in `offered`; unknown values (GREASE included) are ignored. */
function highestVersion(offered: readonly number[]): TlsVersion {
  let best: number | undefined;
  for (const version of offered) if (version in TLS_VERSIONS && (best === undefined || version > best)) best = version;
  if (best === undefined) throw new Malformed(`ClientHello offers no known TLS version (${offered.map(hex16).join(", ")})`);
  return TLS_VERSIONS[best as keyof typeof TLS_VERSIONS];
}

function hex16(value: number): string {
  return `0x${value.toString(16).padStart(4, "0")}`;
}

/** Why {@link readClientHello} refused a connection's first bytes. */
export type ClientHelloRejection = "not-tls" | "invalid" | "too-large";

/** The peer's first bytes are not an acceptable ClientHello; `rejection` says which way. */
export class ClientHelloRejectedError extends InvalidArgumentError {
  /** "not-tls": no TLS handshake record; "invalid": malformed or ambiguous; "too-large": over `maxBytes`. */
  readonly rejection: ClientHelloRejection;
  constructor(rejection: ClientHelloRejection, message: string) {
    super(message);
    this.rejection = rejection;
  }
}

export interface ReadClientHelloOptions {
  /** Deadline for the whole hello to arrive, in milliseconds. */
  timeoutMs: number;
  /**
   * Most bytes buffered while waiting; a hello that needs more is refused as "too-large".
   * @default MAX_CLIENT_HELLO_BYTES
   */
  maxBytes?: number;
  /** Aborts the wait with an AbortedError. */
  signal?: AbortSignal;
}

export interface ReadClientHelloResult {
  hello: ClientHello;
  /** The hello's records exactly as received (`hello.helloBytes` long), to forward upstream unchanged. */
  buffered: Buffer;
}

/**
 * Reads a connection's first bytes until they hold a complete ClientHello. Bytes the peer sent
 * after the hello are pushed back onto `socket` (`unshift`), so the caller forwards `buffered`
 * and then pipes the socket. The socket stays the caller's: it is never destroyed here, and it is
 * left not flowing, with every listener this call added removed again.
 *
 * @throws {ClientHelloRejectedError} (an InvalidArgumentError) when the bytes are not TLS, are malformed, or exceed `maxBytes`
 * @throws {TimeoutError} when no complete hello arrives within `timeoutMs`
 * @throws {TransportError} when the stream ends, closes or fails first
 * @throws {AbortedError} when `signal` fires
 * @example
 * const { hello, buffered } = await readClientHello(socket, { timeoutMs: 5_000 });
 */
export async function readClientHello(socket: Readable, options: ReadClientHelloOptions): Promise<ReadClientHelloResult> {
  const { timeoutMs, maxBytes = MAX_CLIENT_HELLO_BYTES, signal } = options;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new InvalidArgumentError(`Invalid timeoutMs "${timeoutMs}": expected a positive number`);
  if (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > MAX_CLIENT_HELLO_BYTES) {
    throw new InvalidArgumentError(`Invalid maxBytes "${maxBytes}": expected an integer in 1..${MAX_CLIENT_HELLO_BYTES}`);
  }
  if (socket.readableObjectMode) throw new InvalidArgumentError("Cannot read a ClientHello from an object-mode stream");
  if (signal?.aborted) throw new AbortedError("Reading the ClientHello was aborted", { cause: signal.reason });
  if (socket.destroyed || socket.readableEnded) throw new TransportError("Cannot read a ClientHello: the stream has already ended");

  return new Promise<ReadClientHelloResult>((resolve, reject) => {
    let buf = Buffer.alloc(Math.min(maxBytes, 2048));
    let length = 0;
    let settled = false;

    const finish = (outcome: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off("readable", onReadable);
      socket.off("end", onEnd);
      socket.off("close", onEnd);
      socket.off("error", onError);
      signal?.removeEventListener("abort", onAbort);
      outcome();
    };
    const fail = (err: Error): void => finish(() => reject(err));

    const onTimeout = (): void => fail(new TimeoutError(`No complete ClientHello within ${timeoutMs} ms: received ${length} bytes`));
    const onEnd = (): void => fail(new TransportError(`Connection ended after ${length} bytes, before the ClientHello was complete`));
    const onError = (err: Error): void => fail(new TransportError(`Connection failed after ${length} bytes, before the ClientHello was complete`, { cause: err }));
    const onAbort = (): void => fail(new AbortedError("Reading the ClientHello was aborted", { cause: signal?.reason }));

    /** Appends what fits under maxBytes; returns how many of the chunk's bytes were taken. */
    const append = (chunk: Uint8Array): number => {
      const take = Math.min(chunk.length, maxBytes - length);
      if (length + take > buf.length) {
        const grown = Buffer.alloc(Math.min(maxBytes, Math.max(buf.length * 2, length + take)));
        buf.copy(grown, 0, 0, length);
        buf = grown;
      }
      buf.set(chunk.subarray(0, take), length);
      length += take;
      return take;
    };

    const onReadable = (): void => {
      for (let chunk: unknown = socket.read(); chunk !== null && !settled; chunk = settled ? null : socket.read()) {
        if (!(chunk instanceof Uint8Array)) {
          fail(new InvalidArgumentError("Cannot read a ClientHello from a stream that yields strings: remove its encoding"));
          return;
        }
        const taken = append(chunk);
        const verdict = parseClientHello(buf.subarray(0, length));
        if (verdict.kind === "hello") {
          const { kind: _kind, ...hello } = verdict;
          const excess = Buffer.concat([buf.subarray(verdict.helloBytes, length), chunk.subarray(taken)]);
          const buffered = Buffer.from(buf.subarray(0, verdict.helloBytes));
          finish(() => {
            if (excess.length > 0) socket.unshift(excess);
            resolve({ hello, buffered });
          });
        } else if (verdict.kind === "not-tls") {
          fail(new ClientHelloRejectedError("not-tls", `Connection did not start with a TLS handshake record: first bytes ${describe(buf.subarray(0, Math.min(length, 8)))}`));
        } else if (verdict.kind === "invalid") {
          fail(new ClientHelloRejectedError("invalid", `Invalid TLS ClientHello: ${verdict.reason}`));
        } else if (length + verdict.needBytes > maxBytes) {
          fail(new ClientHelloRejectedError("too-large", `TLS ClientHello needs more than "${maxBytes}" bytes`));
        }
      }
    };

    const timer = setTimeout(onTimeout, timeoutMs);
    socket.on("readable", onReadable);
    socket.on("end", onEnd);
    socket.on("close", onEnd);
    socket.on("error", onError);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Hex of a few hostile bytes, quoted, for an error message. */
function describe(bytes: Uint8Array): string {
  return `"${Buffer.from(bytes).toString("hex")}"`;
}
