"""A reader's working folder shared by the documentation tests, with the README's quick start run in it
once: the guides' first steps start from its ``runs/quickstart`` index, as a reader's would."""

from __future__ import annotations

import pytest

from tests.docs.blocks import blocks
from tests.docs.runner import REPO, Ran, Workdir

#: Commands the pages show that these tests do not run, each with the reason; every one must still be
#: shown somewhere (test_every_command_not_run_here_is_still_shown), so the list cannot go stale.
NOT_RUN_HERE = {
    ". .venv/bin/activate": "the tests put the venv's bin folder first on PATH, which is what activating does",
    "bash scripts/install.sh": "CI runs it verbatim (.ci/run; test_setup_commands_are_what_ci_runs)",
    ".venv/bin/python -m pytest -q": "CI runs it verbatim (.ci/run), and this test is part of it",
    "scripts/redis-stack.sh install": "scripts/install.sh runs it (CI); the Redis fixture installs the same way",
    "scripts/redis-stack.sh start --port 6379 --dir runs/redis --appendonly": (
        "port 6379 may be taken on a shared machine: the session's Redis Stack server "
        "(tests/support/redis_server.py) is started the same way on a free port"
    ),
    "export MAE_REDIS_URL=redis://127.0.0.1:6379/0": "the test sets MAE_REDIS_URL to the session server's URL",
}


def readme_blocks():
    """The README's shell blocks, in order."""
    return blocks((REPO / "README.md").read_text())


def runnable(commands) -> list[str]:
    """The commands of a block that the tests run (all but NOT_RUN_HERE's)."""
    return [c.text for c in commands if c.text not in NOT_RUN_HERE]


@pytest.fixture(scope="session")
def reader(tmp_path_factory) -> Workdir:
    """A fresh working folder with links to examples/, scripts/ and bench/."""
    return Workdir(tmp_path_factory.mktemp("reader"))


@pytest.fixture(scope="session")
def quickstart(reader) -> dict[str, Ran]:
    """The README's quick start, run: each command's result by its text."""
    block = next(b for b in readme_blocks() if any("runs/quickstart" in c.text for c in b.commands))
    return {r.command: r for r in reader.run_all(runnable(block.commands))}
