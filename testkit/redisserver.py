"""A real ``redis-server`` on a free loopback port, for the store tests and the cluster.

``RedisServer.start(directory)`` runs one with no persistence on disk (a test's state lives
only as long as the process), waits until it answers ``PING`` and hands it back; ``stop()``
ends it and ``run()`` brings it back, empty, on the same port (the outage tests);
``pause()``/``resume()`` freeze it (a Redis that accepts connections and never answers).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from pathlib import Path

from testkit.processes import LOOPBACK, Child, HarnessError, free_port, require_tool

__all__ = ["RedisSentinel", "RedisServer"]


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on ``port`` (loopback only, no persistence)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.child: Child | None = None

    @property
    def url(self) -> str:
        """The store URL of database 0 (``GATEWAY_STORE=redis://127.0.0.1:PORT/0``)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, port: int | None = None) -> RedisServer:
        """Start a server (on a free port unless ``port`` is given) and wait for PONG."""
        server = cls(directory, port if port is not None else free_port("tcp"))
        server.run()
        return server

    def command(self, binary: str) -> list[str]:
        """The command line of this server."""
        return [
            binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--protected-mode", "yes",
        ]  # fmt: skip

    def run(self) -> None:
        """(Re)start the process on this server's port; ``HarnessError`` if it never answers."""
        binary = require_tool("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = self.command(binary)
        self.child = Child(command, self.directory, self.directory / f"redis-{self.port}.log")
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if _ping(self.port):
                return
            if not self.child.running:
                break
            time.sleep(0.02)
        log = (self.directory / f"redis-{self.port}.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise HarnessError(f"redis-server did not answer PING on port {self.port}:\n{log}")

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self.child is not None and self.child.running

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL); the port is free again afterwards."""
        if self.child is not None:
            self.child.stop(soft=signal.SIGTERM, grace=5.0)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        if self.child is not None:
            self.child.send(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send(signal.SIGCONT)


class RedisSentinel(RedisServer):
    """A Sentinel (``redis-server --sentinel``) watching ``master`` as service ``mymaster``."""

    service = "mymaster"

    def __init__(self, directory: Path, port: int, master: RedisServer) -> None:
        super().__init__(directory, port)
        self.master = master

    @classmethod
    def watching(cls, directory: Path, master: RedisServer) -> RedisSentinel:
        """Start a Sentinel of ``master`` on a free port and wait for PONG."""
        sentinel = cls(directory, free_port("tcp"), master)
        sentinel.run()
        return sentinel

    @property
    def url(self) -> str:
        """The store URL of the watched master, through this Sentinel."""
        return f"redis+sentinel://{LOOPBACK}:{self.port}/{self.service}/0"

    def command(self, binary: str) -> list[str]:
        config = self.directory / f"sentinel-{self.port}.conf"  # Sentinel rewrites it
        config.write_text(
            f"port {self.port}\nbind {LOOPBACK}\ndir {self.directory}\n"
            f"sentinel monitor {self.service} {LOOPBACK} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
        )
        return [binary, str(config), "--sentinel"]
