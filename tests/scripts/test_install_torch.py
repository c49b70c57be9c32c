"""scripts/install-torch.sh picks torch's build for the machine (issue 15, item 13): without a GPU the
CPU wheel index, probed with a short timeout, falling back to pip's configured index; with a GPU the
default index; TORCH_SPEC kept; the build installed is named.

The venv under test sees this project's torch through a .pth file, so pip finds the requirement
satisfied and nothing is downloaded: what is tested is the choice, the probe's bound and the report.
"""

import http.server
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-torch.sh"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    # pip and torch of this environment, seen by the new venv (pip runs from there too).
    site = next((root / "lib").glob("python*/site-packages"))
    (site / "project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def _bin(tmp_path: Path, gpu: bool) -> str:
    """A PATH whose nvidia-smi says whether there is a GPU (the real one, if any, comes later)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    smi = d / "nvidia-smi"
    body = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"' if gpu else "exit 9"
    smi.write_text(f"#!/bin/sh\n{body}\n")
    smi.chmod(0o755)
    import os

    return f"{d}:{os.environ['PATH']}"


def _run(venv: Path, path: str, **env) -> tuple[subprocess.CompletedProcess, float]:
    import os

    t = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPT), str(venv)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PATH": path, **env})  # fmt: skip
    return r, time.monotonic() - t


def test_unreachable_cpu_index_falls_back_fast(venv, tmp_path):
    # 10.255.255.1 is unroutable: a connection hangs until the probe's timeout stops it.
    r, seconds = _run(venv, _bin(tmp_path, gpu=False), TORCH_CPU_INDEX="http://10.255.255.1/whl/cpu",
                      PROBE_TIMEOUT="2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "is unreachable (2 s)" in r.stderr and "torch==2.13.0" in r.stderr
    assert "installed torch 2.13.0" in r.stdout and "(CPU build" in r.stdout
    assert seconds < 30


@pytest.fixture
def cpu_index(tmp_path):
    """A local stand-in for PyTorch's CPU wheel index (an HTTP server with a torch/ page)."""
    root = tmp_path / "whl"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<html><body></body></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_reachable_cpu_index_is_used_without_a_gpu(venv, tmp_path, cpu_index):
    r, _ = _run(venv, _bin(tmp_path, gpu=False), TORCH_CPU_INDEX=cpu_index)
    assert r.returncode == 0, r.stderr
    assert f"from PyTorch's CPU index {cpu_index}" in r.stderr
    assert "installed torch 2.13.0" in r.stdout


def test_a_gpu_takes_the_default_index_and_torch_spec_is_kept(venv, tmp_path, cpu_index):
    r, _ = _run(venv, _bin(tmp_path, gpu=True), TORCH_CPU_INDEX=cpu_index, TORCH_SPEC="torch")
    assert r.returncode == 0, r.stderr
    assert "a GPU is present: torch from the default index" in r.stderr
    assert "installed torch" in r.stdout


def test_install_sh_uses_it():
    text = (REPO / "scripts" / "install.sh").read_text()
    assert "scripts/install-torch.sh" in text and "TORCH_SPEC" in text
