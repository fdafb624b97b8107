"""A loopback TCP forwarder that a test can cut and restore, to take a server away mid-run.

``TCPCutter(("127.0.0.1", 6379))`` listens on a port of its own and forwards each connection
to the target. :meth:`TCPCutter.cut` closes the listener and every forwarded connection, so a
client sees its connections reset and new ones refused, exactly as when the server goes away;
:meth:`TCPCutter.restore` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

_WAIT = 10.0


class TCPCutter:
    """Forwards loopback connections to ``target`` until cut (see the module docstring)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restore(self) -> None:
        """Listen (again, on the same port once one was chosen) and forward connections."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def cut(self) -> None:
        """Refuse new connections and reset every forwarded one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()
        for thread in self._threads:
            thread.join(_WAIT)
        self._threads.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=_WAIT)
            with self._lock:
                self._sockets.update((client, upstream))
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [], _WAIT)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                for sock in pair:
                    self._sockets.discard(sock)
                    sock.close()

    def __enter__(self) -> TCPCutter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cut()
