"""Start a real ``mae-search serve`` subprocess for tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def start_serve(index: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """Start ``mae-search serve`` on a free port; return the process and its port once it answers.

    The server's stderr goes to a file named by ``proc.log_path``.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # stderr to a file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
    log = tempfile.NamedTemporaryFile(prefix="mae-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "retriever.cli", "serve", "--index", str(index), "--port", str(port),
         "--device", "cpu", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                json.loads(r.read())
                proc.log_path = log.name  # type: ignore[attr-defined]
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("serve did not answer in 180 s")
