"""pytest plugin: a throwaway pyftpdlib FTP server on a free loopback port, for feed delivery tests."""

from __future__ import annotations

import ftplib
import importlib.util
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

STARTUP_TIMEOUT = 10.0
USER = "feeds"
PASSWORD = "feeds-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FTPServer:
    """A pyftpdlib subprocess serving ``root`` to one user with write access.

    ``stop()`` and ``start()`` again keep the port and the files, so tests can make an
    upload fail and then succeed. Passive mode works on loopback: pyftpdlib picks a free
    data port on the control connection's address, 127.0.0.1.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.root = directory / "home"
        self.root.mkdir(exist_ok=True)
        self.user = USER
        self.password = PASSWORD
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.log = directory / "ftp-server.log"
        # Our server greets with this banner, so a server of someone else's that took the
        # port meanwhile is not taken for ours.
        self._banner = f"scrapy-checkpoint test FTP {uuid.uuid4().hex}"
        self._process: subprocess.Popen | None = None

    def url(self, path: str = "") -> str:
        """``ftp://user:pass@127.0.0.1:PORT/path``, *path* relative to :attr:`root`."""
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"ftp://{credentials}@{self.host}:{self.port}/{path.lstrip('/')}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pyftpdlib", "--interface", self.host, "--port", str(self.port),
                 "--directory", str(self.root), "--username", self.user, "--password", self.password,
                 "--write", "--banner", self._banner],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._accepts_login():
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                pytest.fail(f"pyftpdlib exited with code {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"pyftpdlib did not accept a login on port {self.port} within "
                            f"{STARTUP_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _accepts_login(self) -> bool:
        try:
            with ftplib.FTP() as ftp:
                ftp.connect(self.host, self.port, timeout=1)
                if self._banner not in ftp.getwelcome():
                    return False
                ftp.login(self.user, self.password)
                return True
        except (OSError, ftplib.Error, EOFError):
            return False

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory):
    """An FTP server for the session; tests may ``stop()`` and ``start()`` it."""
    if importlib.util.find_spec("pyftpdlib") is None:
        # Never skip: a CI run that silently skips the FTP feed tests would look green.
        pytest.fail("pyftpdlib is not installed: pip install -e '.[test]'.")
    server = FTPServer(tmp_path_factory.mktemp("ftp"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Show the server's log under a failed test that used it: the upload may have failed there."""
    report = yield
    server = getattr(item, "funcargs", {}).get("ftp_server")
    if report.failed and isinstance(server, FTPServer):
        report.sections.append((f"ftp_server log ({server.log})", server.log_tail()))
    return report
