"""What the suite's server fixtures share: a subprocess on a free loopback port, waited for until
it answers, stopped on demand, its output kept in a log."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server subprocess. Subclasses give :meth:`command` and :meth:`answers` (a probe that
    tells this server from another that took the port meanwhile); ``stop()`` then ``start()``
    keeps the port, so tests can take the server away and give it back."""

    #: For messages: what the server is.
    name = "server"
    startup_timeout = 10.0

    def __init__(self, directory: Path, log_name: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.log = directory / log_name
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The subprocess's environment; None inherits this one."""
        return None

    def answers(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while not self.answers():
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                pytest.fail(f"{self.name} exited with code {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} did not answer on port {self.port} within "
                            f"{self.startup_timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""
