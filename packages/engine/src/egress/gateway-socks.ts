/**
 * A bounded SOCKS5 handshake parser (RFC 1928) for the egress gateway: the no-authentication
 * method and the CONNECT command only. Pure: bytes in, steps out; no I/O.
 *
 * Wire shapes read here:
 *   greeting: VER(5) NMETHODS(1..255) METHODS[NMETHODS]
 *   request:  VER(5) CMD RSV(0) ATYP ADDR PORT(2, big-endian)
 *             ATYP 1: 4 bytes; 3: LEN(1..255) NAME[LEN]; 4: 16 bytes
 */

export const SOCKS_VERSION = 5;
/** Most bytes of a greeting: version, count, 255 methods. */
export const MAX_SOCKS_GREETING_BYTES = 2 + 255;
/** Most bytes of a request: header, domain length byte, 255-byte name, port. */
export const MAX_SOCKS_REQUEST_BYTES = 4 + 1 + 255 + 2;
/** Most bytes the parser holds while it waits for more. */
export const MAX_SOCKS_BUFFER_BYTES = MAX_SOCKS_GREETING_BYTES + MAX_SOCKS_REQUEST_BYTES;

/** SOCKS5 reply codes the gateway sends. */
export const SocksReply = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  hostUnreachable: 0x04,
  refused: 0x05,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;
export type SocksReplyCode = (typeof SocksReply)[keyof typeof SocksReply];

const METHOD_NO_AUTH = 0x00;
const METHOD_NONE_ACCEPTABLE = 0xff;
const CMD_CONNECT = 0x01;
const ATYP_IPV4 = 0x01;
const ATYP_DOMAIN = 0x03;
const ATYP_IPV6 = 0x04;

/** Where the client asked to go; `host` is a dotted IPv4, a full IPv6 text, or the raw name (latin1). */
export interface SocksTarget {
  readonly addressType: "ipv4" | "ipv6" | "domain";
  readonly host: string;
  readonly port: number;
}

/**
 * One parser step.
 * `greeting`: the client's methods are known; send {@link methodSelection}(accepted); stop when not accepted.
 * `request`: a CONNECT request; `rest` holds bytes the client sent after it.
 * `error`: the handshake cannot go on; send {@link socksReplyBytes}(reply) when `reply` is set, then close.
 */
export type SocksStep =
  | { kind: "need-more" }
  | { kind: "greeting"; accepted: boolean }
  | { kind: "request"; target: SocksTarget; rest: Buffer }
  | { kind: "error"; reason: string; reply?: SocksReplyCode };

type Phase = "greeting" | "request" | "done";

/**
 * Feeds bytes in with {@link Socks5Parser.feed}, takes steps out with {@link Socks5Parser.step}.
 * Never throws; while it answers `need-more` it holds at most {@link MAX_SOCKS_BUFFER_BYTES}.
 *
 * @example
 * parser.feed(chunk);
 * for (let s = parser.step(); s.kind !== "need-more"; s = parser.step()) { ... }
 */
export class Socks5Parser {
  #buf: Buffer = Buffer.alloc(0);
  #phase: Phase = "greeting";

  /** Bytes held and not yet consumed by a step. */
  get bufferedBytes(): number {
    return this.#buf.length;
  }

  /** Appends bytes; ignored once the handshake is done or failed. */
  feed(chunk: Uint8Array): void {
    if (this.#phase === "done" || chunk.length === 0) return;
    this.#buf = this.#buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#buf, chunk]);
  }

  /** The next step; `need-more` until enough bytes arrived, and for ever after the last step. */
  step(): SocksStep {
    if (this.#phase === "done") return { kind: "need-more" };
    const result = this.#phase === "greeting" ? this.#greeting() : this.#request();
    if (result.kind === "error" || result.kind === "request" || (result.kind === "greeting" && !result.accepted)) {
      this.#phase = "done";
      this.#buf = Buffer.alloc(0);
    }
    return result;
  }

  #greeting(): SocksStep {
    const b = this.#buf;
    if (b.length < 1) return { kind: "need-more" };
    if (b[0] !== SOCKS_VERSION) return { kind: "error", reason: `SOCKS greeting has version ${b[0]}, not 5` };
    if (b.length < 2) return { kind: "need-more" };
    const count = b[1] ?? 0;
    if (count === 0) return { kind: "error", reason: "SOCKS greeting offers no methods" };
    if (b.length < 2 + count) return { kind: "need-more" };
    const methods = b.subarray(2, 2 + count);
    this.#buf = b.subarray(2 + count);
    this.#phase = "request";
    return { kind: "greeting", accepted: methods.includes(METHOD_NO_AUTH) };
  }

  #request(): SocksStep {
    const b = this.#buf;
    if (b.length < 1) return { kind: "need-more" };
    if (b[0] !== SOCKS_VERSION) return { kind: "error", reason: `SOCKS request has version ${b[0]}, not 5`, reply: SocksReply.generalFailure };
    if (b.length < 2) return { kind: "need-more" };
    if (b[1] !== CMD_CONNECT) return { kind: "error", reason: `SOCKS command ${b[1]} is not supported: only CONNECT (1)`, reply: SocksReply.commandNotSupported };
    if (b.length < 4) return { kind: "need-more" };
    if (b[2] !== 0) return { kind: "error", reason: `SOCKS request has reserved byte ${b[2]}, not 0`, reply: SocksReply.generalFailure };
    const atyp = b[3];
    let addressEnd: number;
    if (atyp === ATYP_IPV4) addressEnd = 4 + 4;
    else if (atyp === ATYP_IPV6) addressEnd = 4 + 16;
    else if (atyp === ATYP_DOMAIN) {
      if (b.length < 5) return { kind: "need-more" };
      const length = b[4] ?? 0;
      if (length === 0) return { kind: "error", reason: "SOCKS domain name is empty", reply: SocksReply.generalFailure };
      addressEnd = 5 + length;
    } else {
      return { kind: "error", reason: `SOCKS address type ${atyp} is not supported`, reply: SocksReply.addressTypeNotSupported };
    }
    if (b.length < addressEnd + 2) return { kind: "need-more" };
    const port = ((b[addressEnd] ?? 0) << 8) | (b[addressEnd + 1] ?? 0);
    const target: SocksTarget =
      atyp === ATYP_IPV4
        ? { addressType: "ipv4", host: Array.from(b.subarray(4, 8)).join("."), port }
        : atyp === ATYP_IPV6
          ? { addressType: "ipv6", host: ipv6Text(b.subarray(4, 20)), port }
          : { addressType: "domain", host: b.subarray(5, addressEnd).toString("latin1"), port };
    return { kind: "request", target, rest: Buffer.from(b.subarray(addressEnd + 2)) };
  }
}

/** Eight colon-separated hex groups, not compressed (node:net accepts it). */
function ipv6Text(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  return groups.join(":");
}

/** The server's method selection: no authentication when accepted, else "no acceptable methods". */
export function methodSelection(accepted: boolean): Buffer {
  return Buffer.from([SOCKS_VERSION, accepted ? METHOD_NO_AUTH : METHOD_NONE_ACCEPTABLE]);
}

/** A reply with bound address 0.0.0.0:0 (the gateway does not reveal its own address). */
export function socksReplyBytes(code: SocksReplyCode): Buffer {
  return Buffer.from([SOCKS_VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0]);
}

/** A client's greeting and CONNECT request for `target`, as a SOCKS5 client writes them. */
export function encodeSocksConnect(target: SocksTarget): Buffer {
  const port = [(target.port >> 8) & 0xff, target.port & 0xff];
  let address: number[];
  if (target.addressType === "ipv4") address = [ATYP_IPV4, ...target.host.split(".").map(Number)];
  else if (target.addressType === "ipv6") {
    address = [ATYP_IPV6];
    for (const group of target.host.split(":")) address.push((parseInt(group, 16) >> 8) & 0xff, parseInt(group, 16) & 0xff);
  } else {
    const name = Buffer.from(target.host, "latin1");
    address = [ATYP_DOMAIN, name.length, ...name];
  }
  return Buffer.from([SOCKS_VERSION, 1, METHOD_NO_AUTH, SOCKS_VERSION, CMD_CONNECT, 0, ...address, ...port]);
}
