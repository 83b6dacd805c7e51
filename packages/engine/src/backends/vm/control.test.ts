/**
 * ControlPort against a scripted guest on the other end of a real unix socket: the exact request
 * lines the host sends, the answers it accepts, and what a hostile guest can and cannot do to it.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { type Socket, connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createHash } from "node:crypto";
import { InvalidArgumentError, TimeoutError, TransportError } from "@mvm/protocol";
import fc from "fast-check";
import { ControlPort, trustRequest } from "./control.js";
import { MAX_TRUST_BUNDLE_BYTES, MAX_TRUST_PAYLOAD_BYTES } from "./init-script.js";

/** A deadline no passing test comes near; tests that expect a timeout pass their own. */
const T = 20_000;

let dir: string;
let pairs = 0;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-control-test-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The guest's end: reads the host's request lines and writes whatever the test says. */
class FakeGuest {
  received = "";
  readonly #lines: string[] = [];
  readonly #waiters: ((line: string) => void)[] = [];
  #scan = 0;
  /** Settles when the socket is closed (a reset from the host counts). */
  readonly ended: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.setEncoding("latin1");
    socket.on("data", (text: string) => {
      this.received += text;
      for (let nl = this.received.indexOf("\n", this.#scan); nl >= 0; nl = this.received.indexOf("\n", this.#scan)) {
        const line = this.received.slice(this.#scan, nl);
        this.#scan = nl + 1;
        const waiter = this.#waiters.shift();
        if (waiter) waiter(line);
        else this.#lines.push(line);
      }
    });
    socket.on("error", () => undefined);
    this.ended = new Promise((resolve) => socket.once("close", () => resolve()));
  }

  /** The next line the host sent. */
  nextLine(): Promise<string> {
    const line = this.#lines.shift();
    return line !== undefined ? Promise.resolve(line) : new Promise((resolve) => this.#waiters.push(resolve));
  }

  send(data: string | Uint8Array): void {
    this.socket.write(data);
  }

  /** Every line the host sent, once the host's end is closed. */
  async allLines(): Promise<string[]> {
    await this.ended;
    return this.received.split("\n").slice(0, -1);
  }
}

/** A connected host socket wrapped in a ControlPort and the guest socket it talks to. */
async function open(): Promise<{ port: ControlPort; host: Socket; guest: FakeGuest }> {
  const path = join(dir, `c${pairs++}.sock`);
  const server = createServer();
  server.listen(path);
  await once(server, "listening");
  const accepted = once(server, "connection") as Promise<[Socket]>;
  const host = connect(path);
  await once(host, "connect");
  const [guestSocket] = await accepted;
  server.close();
  return { port: new ControlPort(host, "vm-test"), host, guest: new FakeGuest(guestSocket) };
}

/** Resolves once the ControlPort has handled the next chunk the host socket reads. */
function chunkHandled(host: Socket): Promise<unknown> {
  return once(host, "data");
}

/** Resolves once the ControlPort has handled `bytes` more bytes from the host socket. */
function bytesHandled(host: Socket, bytes: number): Promise<void> {
  return new Promise((resolve) => {
    let seen = 0;
    const onData = (chunk: string | Buffer) => {
      seen += chunk.length;
      if (seen < bytes) return;
      host.off("data", onData);
      resolve();
    };
    host.on("data", onData);
  });
}

const isTransport = (err: unknown) => err instanceof TransportError;

describe("ControlPort requests", () => {
  it("reseed sends 64 fresh random bytes as 128 hex characters each time", async () => {
    const { port, guest } = await open();
    const seeds: string[] = [];
    for (let i = 0; i < 3; i++) {
      const done = port.reseed(T);
      const line = await guest.nextLine();
      const m = /^seed ([0-9a-f]{128})$/.exec(line);
      assert.ok(m, `unexpected request ${JSON.stringify(line)}`);
      seeds.push(m[1]!);
      guest.send("ok seed\n");
      await done;
    }
    assert.equal(new Set(seeds).size, 3);
    port.close();
    assert.equal((await guest.allLines()).length, 3);
  });

  it("setClock sends the host's time in whole seconds", async () => {
    const { port, guest } = await open();
    const before = Math.floor(Date.now() / 1000);
    const done = port.setClock(T);
    const line = await guest.nextLine();
    const after = Math.floor(Date.now() / 1000);
    const m = /^clock ([0-9]+)$/.exec(line);
    assert.ok(m, `unexpected request ${JSON.stringify(line)}`);
    const secs = Number(m[1]);
    assert.ok(secs >= before && secs <= after, `clock ${secs} outside [${before}, ${after}]`);
    guest.send("ok clock\n");
    await done;
    port.close();
  });

  it("setLimits writes max for unlimited fields and rounds numbers", async () => {
    const { port, guest } = await open();
    const cases: [Parameters<ControlPort["setLimits"]>[0], string][] = [
      [{ tmpMiB: 64 }, "limits max max max 64"],
      [{ memoryBytes: 268_435_456, pids: 128, cpuQuotaUs: 150_000, tmpMiB: 16 }, "limits 268435456 128 150000 16"],
      [{ memoryBytes: 1000.4, pids: 63.5, cpuQuotaUs: 49_999.6, tmpMiB: 7.7 }, "limits 1000 64 50000 8"],
      [{ pids: 10, tmpMiB: 0 }, "limits max 10 max 0"],
    ];
    for (const [limits, expected] of cases) {
      const done = port.setLimits(limits, T);
      assert.equal(await guest.nextLine(), expected);
      guest.send("ok limits\n");
      await done;
    }
    port.close();
  });

  it("oomKills parses the guest's count", async () => {
    const { port, guest } = await open();
    for (const [answer, count] of [["ok stats oom_kill=0", 0], ["ok stats oom_kill=7", 7], ["ok stats oom_kill=999999999", 999_999_999]] as const) {
      const done = port.oomKills(T);
      assert.equal(await guest.nextLine(), "stats");
      guest.send(`${answer}\n`);
      assert.equal(await done, count);
    }
    port.close();
  });

  it("accepts an answer split over many writes", async () => {
    const { port, host, guest } = await open();
    const done = port.oomKills(T);
    await guest.nextLine();
    for (const piece of ["ok st", "ats oom_", "kill=4", "2"]) {
      const handled = chunkHandled(host);
      guest.send(piece);
      await handled;
    }
    guest.send("\n");
    assert.equal(await done, 42);
    port.close();
  });

  it("sends the next request only after the previous one is answered", async () => {
    const { port, host, guest } = await open();
    const first = port.reseed(T);
    const second = port.setClock(T);
    // Let every queued callback run, then mark the stream: an unserialized port would have
    // written the clock request before the mark.
    await new Promise((resolve) => setImmediate(resolve));
    host.write("mark\n");
    assert.match(await guest.nextLine(), /^seed /);
    assert.equal(await guest.nextLine(), "mark");
    guest.send("ok seed\n");
    await first;
    assert.match(await guest.nextLine(), /^clock [0-9]+$/);
    guest.send("ok clock\n");
    await second;
    port.close();
  });
});

describe("ControlPort against a hostile guest", () => {
  /** Asserts that `port` is dead with `err`: a later request fails with it and sends nothing. */
  async function assertDead(port: ControlPort, guest: FakeGuest, err: unknown, linesSent: number): Promise<void> {
    await assert.rejects(port.reseed(T), (later) => later === err);
    await assert.rejects(port.oomKills(T), (later) => later === err);
    port.close();
    assert.equal((await guest.allLines()).length, linesSent);
  }

  it("fails on an answer over 256 bytes with no newline", async () => {
    const { port, guest } = await open();
    const done = port.reseed(T);
    await guest.nextLine();
    guest.send("o".repeat(300));
    const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(isTransport(err));
    assert.match((err as Error).message, /over 256 bytes/);
    await assertDead(port, guest, err, 1);
  });

  it("fails on an answer over 256 bytes that arrives with its newline", async () => {
    const { port, guest } = await open();
    const done = port.oomKills(T);
    await guest.nextLine();
    guest.send(`ok stats oom_kill=1${" ".repeat(400)}\n`);
    const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(isTransport(err));
    assert.match((err as Error).message, /over 256 bytes/);
    await assertDead(port, guest, err, 1);
  });

  it("accepts an answer of exactly 256 bytes", async () => {
    const { port, guest } = await open();
    const done = port.request("probe", T);
    await guest.nextLine();
    guest.send(`${"a".repeat(256)}\n`);
    assert.equal(await done, "a".repeat(256));
    port.close();
  });

  it("fails on a line nobody asked for", async () => {
    const { port, host, guest } = await open();
    const handled = chunkHandled(host);
    guest.send("ok seed\n");
    await handled;
    const err = await port.reseed(T).then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(isTransport(err));
    assert.match((err as Error).message, /unasked/);
    await assertDead(port, guest, err, 0);
  });

  it("fails on a second line after an answer", async () => {
    const { port, host, guest } = await open();
    const done = port.reseed(T);
    await guest.nextLine();
    const handled = bytesHandled(host, 16);
    guest.send("ok seed\nok seed\n");
    await done;
    await handled;
    await assert.rejects(port.setClock(T), /unasked/);
    port.close();
    assert.equal((await guest.allLines()).length, 1);
  });

  for (const [what, call, answer] of [
    ["a refused seed", (p: ControlPort) => p.reseed(T), "err seed"],
    ["the answer to another request", (p: ControlPort) => p.reseed(T), "ok limits"],
    ["a refused clock", (p: ControlPort) => p.setClock(T), "err clock"],
    ["a seed answer with trailing text", (p: ControlPort) => p.reseed(T), "ok seed "],
    ["a negative OOM count", (p: ControlPort) => p.oomKills(T), "ok stats oom_kill=-1"],
    ["an OOM count in exponent form", (p: ControlPort) => p.oomKills(T), "ok stats oom_kill=1e9"],
    ["an OOM count of ten digits", (p: ControlPort) => p.oomKills(T), "ok stats oom_kill=1000000000"],
    ["an empty OOM count", (p: ControlPort) => p.oomKills(T), "ok stats oom_kill="],
    ["stats with a carriage return", (p: ControlPort) => p.oomKills(T), "ok stats oom_kill=1\r"],
  ] as const) {
    it(`fails on ${what} and stays dead`, async () => {
      const { port, guest } = await open();
      const done: Promise<unknown> = call(port);
      await guest.nextLine();
      guest.send(`${answer}\n`);
      const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
      assert.ok(isTransport(err), `got ${String(err)}`);
      await assertDead(port, guest, err, 1);
    });
  }

  it("times out on a silent guest", async () => {
    const { port, guest } = await open();
    const done = port.reseed(100);
    await guest.nextLine();
    const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(err instanceof TimeoutError, `got ${String(err)}`);
    assert.match(err.message, /"seed" within 100 ms/);
    await assertDead(port, guest, err, 1);
  });

  it("ignores an answer that comes after the deadline", async () => {
    const { port, guest } = await open();
    const done = port.oomKills(100);
    await guest.nextLine();
    const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(err instanceof TimeoutError);
    guest.send("ok stats oom_kill=0\n");
    await assertDead(port, guest, err, 1);
  });

  it("fails when the guest closes the port mid-request", async () => {
    const { port, guest } = await open();
    const done = port.setLimits({ tmpMiB: 1 }, T);
    await guest.nextLine();
    guest.socket.destroy();
    const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(isTransport(err), `got ${String(err)}`);
    await assert.rejects(port.reseed(T), (later) => later === err);
    port.close();
  });

  it("fails the request in flight when the host closes the port", async () => {
    const { port, guest } = await open();
    const done = port.reseed(T);
    await guest.nextLine();
    port.close();
    await assert.rejects(done, isTransport);
    await assert.rejects(port.reseed(T), isTransport);
    assert.equal((await guest.allLines()).length, 1);
  });

  it("settles every request for any bytes the guest sends", async () => {
    const guard = 10_000;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.constantFrom("ok stats oom_kill=3\n", "\n", "ok stats oom_kill=")), { maxLength: 6 }),
        fc.boolean(),
        fc.boolean(),
        async (chunks, early, hangUp) => {
          const { port, guest } = await open();
          try {
            const write = () => {
              for (const chunk of chunks) guest.send(typeof chunk === "string" ? chunk : Buffer.from(chunk));
              if (hangUp) guest.socket.end();
            };
            if (early) write();
            const done = port.oomKills(50);
            if (!early) {
              await guest.nextLine();
              write();
            }
            let timer: NodeJS.Timeout | undefined;
            const hung = new Promise<never>((_, reject) => {
              timer = setTimeout(() => reject(new Error("request did not settle")), guard);
            });
            const outcome = await Promise.race([done, hung]).then(
              (count) => ({ count }),
              (err: unknown) => ({ err }),
            ).finally(() => clearTimeout(timer));
            if ("count" in outcome) {
              const { count } = outcome;
              assert.ok(Number.isSafeInteger(count) && count >= 0 && count <= 999_999_999, `bad count ${count}`);
            } else {
              const { err } = outcome;
              assert.ok(err instanceof TransportError || err instanceof TimeoutError, `unexpected ${String(err)}`);
            }
          } finally {
            port.close();
            await guest.ended;
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

/** Resolves once the guest has received at least `bytes` bytes in all. */
async function receivedAtLeast(guest: FakeGuest, bytes: number): Promise<void> {
  while (guest.received.length < bytes) await once(guest.socket, "data");
}

describe("trust bundle requests", () => {
  const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

  it("encodes a request line with the base64 length and the PEM's sha256, then the base64", () => {
    const { line, payload } = trustRequest(pem, "sbx_1");
    assert.equal(payload, Buffer.from(pem).toString("base64"));
    assert.equal(line, `trust ${payload.length} ${createHash("sha256").update(pem).digest("hex")}`);
  });

  it("round-trips any bundle: the guest decodes the payload to the PEM's bytes and checks the hash", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", minLength: 1, maxLength: 2000 }), (text) => {
        const { line, payload } = trustRequest(text, "sbx_1");
        const m = /^trust ([0-9]+) ([0-9a-f]{64})$/.exec(line);
        assert.ok(m, line);
        assert.equal(Number(m[1]), payload.length);
        assert.ok(payload.length <= MAX_TRUST_PAYLOAD_BYTES);
        assert.match(payload, /^[A-Za-z0-9+/]*={0,2}$/);
        const decoded = Buffer.from(payload, "base64");
        assert.deepEqual(decoded, Buffer.from(text, "utf8"));
        assert.equal(createHash("sha256").update(decoded).digest("hex"), m[2]);
      }),
    );
  });

  it("refuses an empty bundle and one over the limit, and accepts one at the limit", () => {
    assert.throws(() => trustRequest("", "sbx_1"), (err: unknown) => err instanceof InvalidArgumentError && /"sbx_1": the trust bundle has 0 bytes/.test(err.message));
    assert.throws(() => trustRequest("a".repeat(MAX_TRUST_BUNDLE_BYTES + 1), "sbx_1"), InvalidArgumentError);
    // Counted in UTF-8 bytes, not characters.
    assert.throws(() => trustRequest("é".repeat(MAX_TRUST_BUNDLE_BYTES / 2 + 1), "sbx_1"), InvalidArgumentError);
    const { line, payload } = trustRequest("a".repeat(MAX_TRUST_BUNDLE_BYTES), "sbx_1");
    assert.equal(payload.length, MAX_TRUST_PAYLOAD_BYTES);
    assert.match(line, new RegExp(`^trust ${MAX_TRUST_PAYLOAD_BYTES} `));
  });

  it("sends exactly the line and the payload, waits for ok trust, then goes on", async () => {
    const { port, guest } = await open();
    const { line, payload } = trustRequest(pem, "vm-test");
    const done = port.installTrustBundle(pem, T);
    assert.equal(await guest.nextLine(), line);
    await receivedAtLeast(guest, line.length + 1 + payload.length);
    guest.send("ok trust\n");
    await done;
    const stats = port.oomKills(T);
    await receivedAtLeast(guest, line.length + 1 + payload.length + "stats\n".length);
    guest.send("ok stats oom_kill=0\n");
    assert.equal(await stats, 0);
    port.close();
    await guest.ended;
    assert.equal(guest.received, `${line}\n${payload}stats\n`);
  });

  it("sends a bundle near the limit whole", async () => {
    const { port, guest } = await open();
    const big = "x".repeat(MAX_TRUST_BUNDLE_BYTES - 3);
    const { line, payload } = trustRequest(big, "vm-test");
    const done = port.installTrustBundle(big, T);
    await receivedAtLeast(guest, line.length + 1 + payload.length);
    guest.send("ok trust\n");
    await done;
    port.close();
    await guest.ended;
    assert.equal(guest.received.length, line.length + 1 + payload.length);
  });

  it("rejects a too large bundle without sending anything", async () => {
    const { port, guest } = await open();
    await assert.rejects(port.installTrustBundle("a".repeat(MAX_TRUST_BUNDLE_BYTES + 1), T), InvalidArgumentError);
    port.close();
    await guest.ended;
    assert.equal(guest.received, "");
  });

  for (const answer of ["err trust", "ok trust ", "ok start", "err unknown", "ok trus"]) {
    it(`fails on the answer ${JSON.stringify(answer)} and stays dead`, async () => {
      const { port, guest } = await open();
      const done = port.installTrustBundle(pem, T);
      await guest.nextLine();
      guest.send(`${answer}\n`);
      const err = await done.then(() => assert.fail("resolved"), (e: unknown) => e);
      assert.ok(isTransport(err), `got ${String(err)}`);
      assert.match((err as Error).message, /refused "trust"/);
      await assert.rejects(port.reseed(T), (later) => later === err);
      port.close();
    });
  }
});
