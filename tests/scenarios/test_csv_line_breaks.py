"""A value holding a line break stays one cell of one row in every CSV the project writes (issue 31, item 7's
neighbour). Linux file names may hold ``\\r`` and ``\\n`` (a --metadata tag may not: the build refuses it); Python 3.11's csv writer with
``lineterminator="\\n"`` (and pandas' ``to_csv``) quoted neither a bare ``\\r`` nor, for pandas, anything
but ``\\n``, so ``csv.reader``, ``pandas.read_csv`` and spreadsheets split the row at the ``\\r``.

Each file is read back both ways: ``csv.reader(open(p, newline=""))`` and ``pandas.read_csv``."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from eval.phenotype_run import write_outputs
from eval.report import _write_csv
from indexer.bbbc006.synthetic.phenotypes import SiteTruth
from indexer.bbbc006.synthetic.write import _write_ground_truth
from indexer.cli import main as index_main
from retriever.cli import main as search_main
from tests.conftest import REPO

OWN = REPO / "examples" / "own-data" / "images"
#: File names as Linux allows them: a carriage return, a newline, both.
NAMES = ("cr\rname.tif", "lf\nname.tif", "crlf\r\nname.tif", "plain.tif")
#: A --metadata tag per image (a tag with a control character is refused: exit 2), one a formula.
TAGS = ("dmso", "taxol", "=1+2", "none")
BROKEN = "bad\rfile.tif"


def _read_both(text: str) -> tuple[list[list[str]], pd.DataFrame]:
    """The CSV ``text`` as ``csv.reader`` (universal newlines off, as the csv docs ask) and pandas read it."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    frame = pd.read_csv(io.StringIO(text, newline=""), dtype=str, keep_default_na=False)
    return rows, frame


def _file(path: Path) -> tuple[list[list[str]], pd.DataFrame]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows, pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def plate(tmp_path_factory, tiny_model_dir):
    """``(data, index)``: 4 real single-plane TIFFs named with line breaks, a broken one, and a --metadata
    table (written by the stdlib's RFC 4180 writer, as a spreadsheet would) naming those paths."""
    root = tmp_path_factory.mktemp("linebreaks")
    data = root / "data"
    data.mkdir()
    singles = [p for p in sorted(OWN.glob("*.tif")) if "stack" not in p.name]
    for name, src in zip(NAMES, singles, strict=True):
        shutil.copy(src, data / name)
    (data / BROKEN).write_bytes(b"II*\x00not a tiff")
    table = root / "plate.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "well", "treatment"])
        w.writerows([str(data / n), f"A0{i + 1}", t] for i, (n, t) in enumerate(zip(NAMES, TAGS)))
    r = CliRunner().invoke(index_main, ["build", str(data), "--index", str(root / "idx"), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress", "--metadata",
                                        str(table)])  # fmt: skip
    assert r.exit_code == 0, r.output
    return data, root / "idx"


def _escaped(tag: str) -> str:
    return "'" + tag if tag.startswith("=") else tag


def test_query_csv_keeps_a_path_with_a_line_break_in_one_row(plate):
    """c59f047: 9 data rows for 4 hits, in csv.reader and pandas alike (``cr\\rname.tif`` was written bare,
    splitting the query cell of every row and one path cell). Now: 4 rows, the exact paths and tags."""
    data, index = plate
    query = str(data / NAMES[0])
    r = CliRunner().invoke(search_main, ["query", query, "--index", str(index), "-k", "4", "--device", "cpu",
                                         "--format", "csv"])  # fmt: skip
    assert r.exit_code == 0, r.output
    text = r.stdout_bytes.decode()  # not r.stdout: click's test runner turns every \r\n into \n
    rows, frame = _read_both(text)
    assert len(rows) == 1 + 4 and len(frame) == 4
    header = rows[0]
    got = [dict(zip(header, row)) for row in rows[1:]]
    assert [g["query"] for g in got] == [query] * 4 == frame["query"].tolist()
    # The cell is "treatment==1+2": it starts with a letter, so it is no formula and keeps its text.
    want = {str(data / n): f"treatment={t}" for n, t in zip(NAMES, TAGS)}
    assert {g["path"]: g["tags"] for g in got} == want
    assert dict(zip(frame["path"], frame["tags"])) == want
    assert got[0]["path"] == query and float(got[0]["score"]) == pytest.approx(1.0, abs=1e-5)
    assert text.startswith(",".join(header) + "\n")  # rows still end with \n


def test_export_csv_keeps_a_path_with_a_line_break_in_one_row(plate, tmp_path):
    """c59f047 (pandas' to_csv, line ends \\n): 5 data rows for 4 images in csv.reader and pandas (the bare
    ``\\r`` of ``cr\\rname.tif``; a \\n was quoted already). Now: 4 rows, each path and tag exact."""
    _, index = plate
    out = tmp_path / "plate.csv"
    r = CliRunner().invoke(
        index_main, ["export", "--index", str(index), "--format", "csv", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    rows, frame = _file(out)
    assert len(rows) == 1 + 4 and len(frame) == 4
    data = plate[0]
    want = {str(data / n): _escaped(t) for n, t in zip(NAMES, TAGS)}
    assert dict(zip(frame["path"], frame["treatment"])) == want
    i, j = rows[0].index("path"), rows[0].index("treatment")
    assert {row[i]: row[j] for row in rows[1:]} == want
    assert out.read_bytes().startswith(b"id,path,") and b",f0,f1," in out.read_bytes().split(b"\n")[0]


def test_rejected_csv_quotes_the_path_and_ends_rows_like_every_other_csv(plate):
    """c59f047: the path was quoted already (csv.writer's default \\r\\n terminator), but rows ended with
    \\r\\n where every other CSV of the project ends them with \\n. Now: one writer, \\n, same value."""
    data, index = plate
    raw = (index / "rejected.csv").read_bytes()
    rows, frame = _file(index / "rejected.csv")
    assert rows[1:] == [[str(data / BROKEN), "decode", frame["reason"][0]]] and len(frame) == 1
    assert frame["path"].tolist() == [str(data / BROKEN)]
    assert raw.startswith(b"path,stage,reason\n") and raw.endswith(b"?)\n")


def test_metadata_table_with_quoted_line_breaks_matches_every_image(plate):
    """The --metadata reader (pandas) reads a quoted \\r, \\n and \\r\\n in a path as one cell: each
    image got its own row's tag (passes on c59f047 too: the reader was right, the writers were not)."""
    from indexer.stores.faiss.store import FaissStore

    data, index = plate
    store = FaissStore(index, read_only=True)
    got = {r.path: (r.well, dict(r.tags).get("treatment")) for r in store.get(store.ids())}
    store.close()
    assert got == {str(data / n): (f"A0{i + 1}", t) for i, (n, t) in enumerate(zip(NAMES, TAGS))}


VALUES = ("a\rb", "a\nb", "a\r\nb", "=x\ry")


def test_eval_rows_and_summary_csv_quote_line_breaks(tmp_path):
    """c59f047: ``a\\rb`` and ``=x\\ry`` written bare: 6 data rows for 4 in csv.reader and pandas. Now 4."""
    _write_csv(tmp_path / "rows.csv", [{"query": v, "self_at_1": 1.0} for v in VALUES])
    rows, frame = _file(tmp_path / "rows.csv")
    want = ["a\rb", "a\nb", "a\r\nb", "'=x\ry"]
    assert [r[0] for r in rows[1:]] == want == frame["query"].tolist()
    assert [r[1] for r in rows[1:]] == ["1.0"] * 4


def test_phenotype_csv_quotes_and_escapes_labels(tmp_path):
    """c59f047: labels written as given (a ``=`` label ran as a formula) with \\r\\n row ends; now escaped
    like every other CSV's text, quoted, rows ending \\n."""
    overall = [{"embedding": "model", "map": 0.5, "map_low": 0.4, "map_high": 0.6, "chance": 0.3,
                "n_queries": 8, "n_groups": 4}]  # fmt: skip
    by_label = [{**overall[0], "label": v} for v in VALUES]
    (tmp_path / "p").mkdir()
    write_outputs({"label": "treatment", "level": "image", "overall": overall, "by_label": by_label},
                  tmp_path / "p")  # fmt: skip
    rows, frame = _file(tmp_path / "p" / "phenotype.csv")
    assert (
        [r[1] for r in rows[1:]] == ["(all)", "a\rb", "a\nb", "a\r\nb", "'=x\ry"] == frame["label"].tolist()
    )
    assert (tmp_path / "p" / "phenotype.csv").read_bytes().startswith(b"embedding,label,map,")
    assert b"\r\n" not in (tmp_path / "p" / "phenotype.csv").read_bytes().replace(b"a\r\nb", b"")


def test_synthetic_ground_truth_quotes_line_breaks_and_merges_them_back(tmp_path):
    """c59f047: a bare ``\\r`` split the row; the next run into the folder read the torn rows back and
    crashed (TypeError sorting a key holding None). Now: one row per site, the exact value, after a second
    write too."""
    base = dict(well="A01", row="A", column=1, site=1, phenotype_class="cls\rx", cell_count=3, n_mitotic=0,
                nuclear_radius_px=5.0, confluence=0.1, intensity_scale=1.0, mitotic_fraction=0.0, seed=0,
                plate="P1")  # fmt: skip
    path = tmp_path / "truth.csv"
    _write_ground_truth(path, [SiteTruth(**base)])
    _write_ground_truth(path, [SiteTruth(**{**base, "site": 2, "phenotype_class": "cls\ny"})])
    rows, frame = _file(path)
    assert len(rows) == 1 + 2 and frame["phenotype_class"].tolist() == ["cls\rx", "cls\ny"]
    assert frame["site"].tolist() == ["1", "2"]
