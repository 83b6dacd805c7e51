import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { once } from "node:events";
import fc from "fast-check";
import { NotFoundError, UnsupportedCapabilityError } from "@mvm/protocol";
import { z } from "zod";
import { ConnectError, ServerStream, readBody, toConnectError, unwrapEnvelope } from "./connect.js";

function frame(flags: number, json: string): Buffer {
  const body = Buffer.from(json);
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(body.byteLength, 1);
  return Buffer.concat([head, body]);
}

describe("Connect framing", () => {
  test("one envelope: flags byte, big-endian u32 length, the JSON message", () => {
    assert.deepEqual(unwrapEnvelope(frame(0, '{"a":1}')), { a: 1 });
  });

  test("anything else is invalid_argument, never a crash", () => {
    for (const bad of [Buffer.alloc(0), Buffer.from([0, 0, 0]), frame(2, "{}"), frame(1, "{}"), Buffer.concat([frame(0, "{}"), frame(0, "{}")]), frame(0, '{"a":1,"a":2}'), frame(0, "{")]) {
      assert.throws(() => unwrapEnvelope(bad), (e: unknown) => e instanceof ConnectError && e.code === "invalid_argument");
    }
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        try {
          unwrapEnvelope(Buffer.from(bytes));
        } catch (e) {
          assert.ok(e instanceof ConnectError && e.code === "invalid_argument");
        }
      }),
    );
  });

  test("engine errors keep their meaning as Connect codes", () => {
    assert.equal(toConnectError(new NotFoundError("x")).code, "not_found");
    assert.equal(toConnectError(new UnsupportedCapabilityError("x")).code, "unimplemented");
    assert.equal(toConnectError(z.strictObject({}).safeParse({ a: 1 }).error).code, "invalid_argument");
    const hidden = toConnectError(new Error("secret detail"));
    assert.equal(hidden.code, "internal");
    assert.doesNotMatch(hidden.message, /secret/);
  });

  test("a body over the cap is refused before it is buffered whole; a stream ends with its messages and an end-stream envelope", async () => {
    const server = createServer((req, res) => {
      if (req.url === "/body") {
        readBody(req, 1024).then(
          (b) => res.end(String(b.byteLength)),
          (e: ConnectError) => res.writeHead(413).end(e.code),
        );
        return;
      }
      const s = new ServerStream(res);
      void s.send({ n: 1 }).then(() => s.end(new NotFoundError("gone"), { n: 2 }));
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as { port: number }).port;
    try {
      const small = await fetch(`http://127.0.0.1:${port}/body`, { method: "POST", body: "x".repeat(1024) });
      assert.equal(await small.text(), "1024");
      const big = await fetch(`http://127.0.0.1:${port}/body`, { method: "POST", body: "x".repeat(4096) });
      assert.equal(big.status, 413);
      assert.equal(await big.text(), "resource_exhausted");
      const streamed = Buffer.from(await (await fetch(`http://127.0.0.1:${port}/stream`, { method: "POST" })).arrayBuffer());
      assert.deepEqual(streamed, Buffer.concat([frame(0, '{"n":1}'), frame(0, '{"n":2}'), frame(2, '{"error":{"code":"not_found","message":"gone"}}')]));
    } finally {
      server.close();
    }
  });
});
