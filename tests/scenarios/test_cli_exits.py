"""Issue 31, item 15 (commands): one clear line and a documented exit code instead of a traceback, a
silent success or work done for nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.conftest import REPO


def _serve(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "from retriever.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "serve", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)  # fmt: skip


@pytest.fixture(scope="module")
def index(tmp_path_factory, real_images, tiny_model_dir):
    from indexer.cli import main

    tmp = tmp_path_factory.mktemp("exits")
    r = CliRunner().invoke(main, ["build", *map(str, real_images[:3]), "--index", str(tmp / "idx"), "--model",
                                  str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return tmp / "idx"


def test_serve_port_out_of_range_is_a_usage_error(index):
    r = _serve("--index", index, "--port", "70000")
    assert (
        r.returncode == 2 and "70000 is not in the range 0<=x<=65535" in r.stderr
    )  # b690aef: served on 4464


def test_serve_on_an_address_that_is_none_exits_2_without_a_traceback(index):
    r = _serve("--index", index, "--host", "256.0.0.1", "--port", "0")
    assert r.returncode == 2 and "--host '256.0.0.1' is not an address" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_serve_on_a_port_in_use_exits_1_without_a_traceback(index):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = _serve("--index", index, "--port", taken.getsockname()[1], "--device", "cpu")
    assert r.returncode == 1 and "cannot listen on 127.0.0.1:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_mae_eval_out_an_existing_file_is_refused_before_the_evaluation(index, tmp_path):
    from eval.cli import main

    out = tmp_path / "report.txt"
    out.write_text("keep")
    r = CliRunner().invoke(main, ["robustness", "--index", str(index), "--queries", "2", "--out", str(out)])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output  # b690aef: traceback after the run
    assert out.read_text() == "keep"


@pytest.mark.redis
def test_drop_redis_of_a_missing_name_exits_1(redis_config):
    from indexer.cli import main

    r = CliRunner().invoke(
        main, ["drop-redis", "--redis-url", redis_config.url, "--redis-index", "no-such-index"]
    )
    assert r.exit_code == 1 and "there is no Redis index 'no-such-index'" in r.output  # b690aef: 0
