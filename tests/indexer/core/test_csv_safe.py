"""CSV cells a spreadsheet would run as a formula are escaped with a leading quote (OWASP)."""

import pytest

from indexer.core.csv_safe import escape_formula


@pytest.mark.parametrize("cell", ['=HYPERLINK("http://x")', "+1", "-1+2", "@SUM(A1)", "\tx", "\r=1"])
def test_formula_cells_get_a_quote(cell):
    assert escape_formula(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["dmso", "A01", "0.1", "", " =1", "'=1", None, -0.5, 3])
def test_other_cells_are_unchanged(cell):
    assert escape_formula(cell) == cell


LINE_BREAKS = ["a\rb", "a\nb", "a\r\nb", "\r", "x\r"]


def _read_both(path):
    import csv

    import pandas as pd

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows, pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.mark.parametrize("how", ["writer", "dict_writer", "frame_to_csv"])
def test_a_value_with_a_line_break_is_quoted_and_rows_end_with_lf(tmp_path, how):
    """Each value holding \\r or \\n stays one cell of one row, read by csv.reader and pandas alike; the
    rows themselves end with \\n (what the project's CSVs always had), never \\r\\n."""
    import pandas as pd

    from indexer.core import csv_safe

    path = tmp_path / "t.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        if how == "writer":
            csv_safe.writer(f).writerows([["v", "n"], *([v, i] for i, v in enumerate(LINE_BREAKS))])
        elif how == "dict_writer":
            w = csv_safe.dict_writer(f, ["v", "n"])
            w.writeheader()
            w.writerows({"v": v, "n": i} for i, v in enumerate(LINE_BREAKS))
    if how == "frame_to_csv":
        csv_safe.frame_to_csv(pd.DataFrame({"v": LINE_BREAKS, "n": range(len(LINE_BREAKS))}), path)
    rows, frame = _read_both(path)
    assert rows == [["v", "n"], *([v, str(i)] for i, v in enumerate(LINE_BREAKS))]
    assert frame["v"].tolist() == LINE_BREAKS and frame["n"].tolist() == [str(i) for i in range(5)]
    raw = path.read_bytes()
    assert raw.startswith(b"v,n\n") and raw.endswith(b'"x\r",4\n') and b'"a\rb",0\n' in raw
