"""File names are untrusted text: an ESC or a carriage return in a name printed raw would make the
terminal run an escape sequence or print over the line. The query table, error lines and log lines show
them as escapes (``\\x1b``, ``\\r``); the JSON and CSV outputs keep the exact name."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.cli.options import setup_logging
from indexer.core.terminal import printable, printable_message
from retriever.cli import main as search_main
from tests.conftest import REPO

EVIL = "a\x1b]0;owned\x07b\x1b[2J\rc\u202egnp.tif"  # retitle, clear screen, carriage return, RTL override


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain µm A01.tif", "plain µm A01.tif"),
        ("a\rb", "a\\rb"),
        ("\x1b[31m", "\\x1b[31m"),
        ("x\u202ey", "x\\u202ey"),
        ("tab\there", "tab\\there"),
    ],  # fmt: skip
)
def test_printable_shows_control_and_format_characters_as_escapes(text, shown):
    assert printable(text) == shown
    assert printable_message("line 1\nline\t2\x1b") == "line 1\nline\t2\\x1b"


def test_the_query_table_and_errors_print_escapes_and_json_keeps_the_name(tmp_path, tiny_model_dir):
    """Before (c59f047): the table printed the ESC sequences and the carriage return raw (the terminal
    retitled itself, cleared the screen and printed over the line). Now: escapes, in the table, on the
    query line and in the error line of a missing file; ``--format json`` keeps the exact path."""
    data = tmp_path / "data"
    data.mkdir()
    src = sorted(
        p for p in (REPO / "examples" / "own-data" / "images").glob("*.tif") if "stack" not in p.name
    )
    shutil.copy(src[0], data / EVIL)
    shutil.copy(src[1], data / "plain.tif")
    idx = tmp_path / "idx"
    r = CliRunner().invoke(index_main, ["build", str(data), "--index", str(idx), "--model", str(tiny_model_dir),
                                        "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    query = str(data / EVIL)
    args = [
        "query",
        query,
        str(data / ("gone\x1b[2J.tif")),
        "--index",
        str(idx),
        "-k",
        "2",
        "--device",
        "cpu",
    ]
    r = CliRunner().invoke(search_main, args)
    out = r.stdout_bytes.decode() + r.stderr_bytes.decode()
    assert r.exit_code == 2, out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert printable(query) in out and "a\\x1b]0;owned\\x07b\\x1b[2J\\rc\\u202egnp.tif" in out
    assert "gone\\x1b[2J.tif" in r.stderr_bytes.decode()
    r = CliRunner().invoke(search_main, [*args[:2], *args[3:], "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout_bytes.decode())[0]["path"] == query


def test_log_lines_show_escapes(capsys):
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        setup_logging(0)
        logging.getLogger("indexer.test").warning("cannot read %s", "x\x1b[2Jy.tif")
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert "cannot read x\\x1b[2Jy.tif" in err and "\x1b" not in err
