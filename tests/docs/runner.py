"""Run the commands a page shows, as a reader would: ``bash -c`` in a working folder that holds links to
the repository's ``examples/``, ``scripts/`` and ``bench/``, with the venv's commands first on PATH.

``mae-search serve`` runs until stopped, so it is started in the background on a free port (its command
with ``--port N`` appended: click keeps the last value) and the page's ``127.0.0.1:8000`` is read as that
port in the commands after it; the server is stopped when its block ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINKED = ("examples", "scripts", "bench")


@dataclass
class Ran:
    """A command as run: exit code and stdout + stderr together."""

    command: str
    rc: int
    output: str


class Workdir:
    """A reader's working folder (``root``) and the environment the commands run in."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in LINKED:
            if not (root / name).exists():
                (root / name).symlink_to(REPO / name)
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        self.server: subprocess.Popen | None = None
        self.port: int | None = None

    def run(self, command: str, timeout: float = 1200) -> Ran:
        """Run one command (or start ``mae-search serve``) and return what it did."""
        if self.port is not None:
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        if command.startswith("mae-search serve"):
            return self._serve(command)
        p = subprocess.run(["bash", "-c", command], cwd=self.root, env=self.env, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        return Ran(command, p.returncode, p.stdout)

    def run_all(self, commands: list[str]) -> list[Ran]:
        """Run commands in order, as one block: a server one starts is stopped at the end."""
        try:
            return [self.run(c) for c in commands]
        finally:
            self.stop()

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path of the running server: status and body."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return r.status, r.read()

    def stop(self) -> None:
        """Stop the server a block started, if any."""
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server, self.port = None, None

    def _serve(self, command: str) -> Ran:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = self.root / f"serve-{port}.log"
        # stderr to a file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {command} --port {port}"], cwd=self.root,
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        self.server, self.port = proc, port
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.server, self.port = None, None
                return Ran(command, proc.returncode, log.read_text())
            try:
                status, body = self.get("/health")
                json.loads(body)
                # The server may answer before its "Serving ..." line reaches the log: wait for it a little.
                for _ in range(60):
                    if "Serving" in log.read_text():
                        break
                    time.sleep(0.5)
                return Ran(command, 0, log.read_text())
            except OSError:
                time.sleep(0.5)
        self.stop()
        return Ran(command, 124, log.read_text() + "\n(no answer from /health in 300 s)")
