"""pytest plugin: a throwaway pyftpdlib FTP server on a free loopback port, for feed delivery tests."""

from __future__ import annotations

import ftplib
import importlib.util
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from .server_process import ServerProcess

USER = "feeds"
PASSWORD = "feeds-secret"


class FTPServer(ServerProcess):
    """A pyftpdlib subprocess serving ``root`` to one user with write access.

    ``stop()`` and ``start()`` again keep the port and the files, so tests can make an
    upload fail and then succeed. Passive mode works on loopback: pyftpdlib picks a free
    data port on the control connection's address, 127.0.0.1.
    """

    name = "pyftpdlib"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "ftp-server.log")
        self.root = directory / "home"
        self.root.mkdir(exist_ok=True)
        self.user = USER
        self.password = PASSWORD
        self.host = "127.0.0.1"
        # Our server greets with this banner, so a server of someone else's that took the
        # port meanwhile is not taken for ours.
        self._banner = f"scrapy-checkpoint test FTP {uuid.uuid4().hex}"

    def url(self, path: str = "") -> str:
        """``ftp://user:pass@127.0.0.1:PORT/path``, *path* relative to :attr:`root`."""
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"ftp://{credentials}@{self.host}:{self.port}/{path.lstrip('/')}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pyftpdlib", "--interface", self.host, "--port", str(self.port),
                "--directory", str(self.root), "--username", self.user, "--password", self.password,
                "--write", "--banner", self._banner]

    def answers(self) -> bool:
        """Whether our server greets with our banner and lets the user in."""
        try:
            with ftplib.FTP() as ftp:
                ftp.connect(self.host, self.port, timeout=1)
                if self._banner not in ftp.getwelcome():
                    return False
                ftp.login(self.user, self.password)
                return True
        except (OSError, ftplib.Error, EOFError):
            return False


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
