"""A TCP proxy that can stop forwarding for a while: a storage stall between the workers and S3.

Every connection to the proxy's port is relayed to the upstream (moto's server). ``stall()`` holds
everything in both directions: bytes already received wait in the proxy, new connections are
accepted by the kernel but not connected upstream, so a client sees a server that has gone quiet
(requests hang; nothing is refused or reset). ``resume()`` lets it all through again.
"""
from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

CHUNK = 64 * 1024
POLL_S = 0.2    # how often a blocked thread looks at the stop flag


class StallProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._stopping = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(256)
        self._listener.settimeout(POLL_S)
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0
        self.stalls = 0
        self.stalled_s = 0.0
        self._stalled_since: float | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "StallProxy":
        self._spawn(self._accept_loop)
        return self

    def stall(self) -> None:
        """Stop forwarding (idempotent)."""
        with self._lock:
            if self._flowing.is_set():
                self._flowing.clear()
                self.stalls += 1
                self._stalled_since = time.monotonic()

    def resume(self) -> None:
        with self._lock:
            if not self._flowing.is_set():
                self.stalled_s += time.monotonic() - (self._stalled_since or time.monotonic())
                self._stalled_since = None
                self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        self._stopping.set()
        self.resume()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "StallProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _wait_flowing(self) -> bool:
        """Block while stalled; False when the proxy is closing."""
        while not self._flowing.wait(POLL_S):
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.update(sockets)

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            for s in sockets:
                self._sockets.discard(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked in sendall on it
                with contextlib.suppress(OSError):
                    s.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._track(client)
            self._spawn(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_flowing():
            self._forget(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            self._forget(client)
            return
        self._track(upstream)
        done = threading.Event()
        self._spawn(self._pump, client, upstream, done)
        self._pump(upstream, client, done)

    def _pump(self, src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
        """Copy src to dst until EOF, holding each chunk while stalled. A half-close is passed on;
        the second direction to end, or any error, closes both sockets."""
        clean_eof = False
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select([src], [], [], POLL_S)
                if not readable:
                    continue
                data = src.recv(CHUNK)
                if not data:
                    if not self._wait_flowing():
                        break
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    clean_eof = True
                    break
                if not self._wait_flowing():
                    break
                dst.sendall(data)
        except (OSError, ValueError):   # ValueError: select on a socket the other direction closed
            pass
        finally:
            first_to_end = not done.is_set()
            done.set()
            if not (clean_eof and first_to_end):
                self._forget(src, dst)
