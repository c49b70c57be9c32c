"""Every command of mae-index, mae-search and mae-eval shows an example in --help, and the options a new
user asks about say what they take (issue 29, item 9)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from eval.cli import main as eval_main
from indexer.cli import main as index_main
from retriever.cli import main as search_main


def _walk(command: click.Command, path: tuple[str, ...]):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, (*path, name))


COMMANDS = [
    (root, path)
    for root, name in ((index_main, "mae-index"), (search_main, "mae-search"), (eval_main, "mae-eval"))
    for path, _ in _walk(root, (name,))
]


@pytest.mark.parametrize("root,path", COMMANDS, ids=[" ".join(p) for _, p in COMMANDS])
def test_every_command_has_an_example_in_its_help(root, path):
    """Before: info, verify, sync, drop-redis, synth, init-model, fetch, query, reconstruct, compare and
    the mae-eval group had none. After: each help holds an Example(s) section naming its own command."""
    r = CliRunner().invoke(root, [*path[1:], "--help"])
    assert r.exit_code == 0, r.output
    assert "Example" in r.output, f"{' '.join(path)} --help has no example"
    example = r.output[r.output.index("Example") :]
    assert " ".join(path) in example, f"{' '.join(path)}: the example runs another command"


def test_perturb_help_lists_the_perturbations():
    from eval.perturb import PERTURBATIONS

    r = CliRunner().invoke(eval_main, ["robustness", "--help"], terminal_width=400)
    text = " ".join(r.output.split())
    assert all(name in text for name in (*PERTURBATIONS, "defocus_z")), text


def test_serve_backend_has_help():
    r = CliRunner().invoke(search_main, ["serve", "--help"], terminal_width=400)
    line = next(line for line in r.output.splitlines() if "--backend" in line)
    assert "Store the page and API search first" in line
