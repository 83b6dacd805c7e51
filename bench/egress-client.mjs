// The client side of bench/egress.mjs, a child process of the bench (so it shares neither the
// gateway's event loop nor its process): connects directly or through the gateway (CONNECT),
// pushes bytes to a sink, or holds idle tunnels open. Requests and answers travel over the IPC
// channel of child_process.fork.
import { connect } from "node:net";
import { performance } from "node:perf_hooks";

const MiB = 1024 * 1024;
const held = [];

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    const onEvent = (v) => {
      emitter.off("error", onError);
      resolve(v);
    };
    const onError = (err) => {
      emitter.off(event, onEvent);
      reject(err);
    };
    emitter.once(event, onEvent);
    emitter.once("error", onError);
  });
}

/** Opens a TCP connection; for the gateway, sends CONNECT and waits for the 200 line. */
async function open(target, viaGateway) {
  const t0 = performance.now();
  if (!viaGateway) {
    const s = connect(target.port, target.ip);
    await once(s, "connect");
    s.setNoDelay(true);
    return { socket: s, ms: performance.now() - t0 };
  }
  const s = connect(viaGateway.port, "127.0.0.1");
  await once(s, "connect");
  s.setNoDelay(true);
  s.write(`CONNECT ${target.name}:${target.port} HTTP/1.1\r\nHost: ${target.name}:${target.port}\r\n\r\n`);
  let head = "";
  await new Promise((resolve, reject) => {
    const onData = (c) => {
      head += c.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      s.off("data", onData);
      if (!/^HTTP\/1\.1 200/.test(head)) return reject(new Error(`gateway said ${head.split("\r\n")[0]}`));
      const rest = Buffer.from(head.slice(end + 4), "latin1");
      if (rest.length > 0) s.unshift(rest);
      resolve();
    };
    s.on("data", onData);
    s.once("error", reject);
  });
  return { socket: s, ms: performance.now() - t0 };
}

/** Pushes `bytes` to the sink and waits until the sink has acknowledged all of them. */
async function push(target, viaGateway, bytes) {
  const { socket } = await open(target, viaGateway);
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  const t0 = performance.now();
  let sent = 0;
  const acked = new Promise((resolve) => {
    let got = "";
    socket.on("data", (c) => {
      got += c.toString();
      if (got.includes("\n")) resolve();
    });
  });
  while (sent < bytes) {
    if (!socket.write(chunk)) await once(socket, "drain");
    sent += chunk.length;
  }
  socket.end();
  await acked;
  const ms = performance.now() - t0;
  socket.destroy();
  return (sent / MiB) / (ms / 1000);
}


process.on("message", async (m) => {
  try {
    let result;
    if (m.op === "push") result = await push(m.target, m.via, m.bytes);
    else if (m.op === "connect") {
      const { socket, ms } = await open(m.target, m.via);
      socket.destroy();
      result = ms;
    } else if (m.op === "hold") {
      for (let i = 0; i < m.count; i++) held.push((await open(m.target, m.via)).socket);
      result = held.length;
    } else if (m.op === "release") {
      for (const s of held.splice(0)) s.destroy();
      result = 0;
    } else if (m.op === "exit") {
      process.disconnect();
      return;
    }
    process.send({ id: m.id, result });
  } catch (err) {
    process.send({ id: m.id, error: String(err?.message ?? err) });
  }
});
