"""A hostile "daemon": a raw Unix socket server answering each request with a scripted behaviour."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Callable

Scenario = Callable[[socket.socket, str], None]


class HostileDaemon:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.dir = tempfile.mkdtemp(prefix="mvm-py-evil-")
        self.path = os.path.join(self.dir, "evil.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            end = head.index(b"\r\n\r\n") + 4
            length = 0
            for line in head[:end].split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = head[end:]
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            self.scenario(conn, head.split(b"\r\n", 1)[0].decode("latin1"))
        except OSError:
            pass

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


def answer(conn: socket.socket, status: int, body: bytes | str, headers: dict[str, str] | None = None) -> None:
    data = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    conn.close()


def forever(conn: socket.socket, chunk: bytes) -> None:
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        pass
