"""CSV cells a spreadsheet would run as a formula are escaped with a leading quote (OWASP)."""

import pytest

from indexer.core.csv_safe import escape_formula


@pytest.mark.parametrize("cell", ['=HYPERLINK("http://x")', "+1", "-1+2", "@SUM(A1)", "\tx", "\r=1"])
def test_formula_cells_get_a_quote(cell):
    assert escape_formula(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["dmso", "A01", "0.1", "", " =1", "'=1", None, -0.5, 3])
def test_other_cells_are_unchanged(cell):
    assert escape_formula(cell) == cell
