"""bench/report.py: the docs' performance tables rendered from result rows."""

from __future__ import annotations

from bench.report import number, render
from tests.bench.test_harness import row


def test_report_renders_a_table_per_run_with_its_commit_machine_and_load():
    rows = [
        row(case="content hash", value=2.65336, parameters={"repeats": 2, "images": 20}),
        row(case="decode, a | b", value=10.2205, parameters={"repeats": 2, "images": 20}),
        row(case="speed-up", metric="speed_up", value=2.26, unit="x", parameters={"repeats": 2}),
        row(group="catalog", case="siblings", metric="per_request", value=115.286, unit="us",
            parameters={"n": 52224}, quick=False, load_start=8.0, load_end=9.5, ran_at="2026-12-07T09:00:00Z"),
    ]  # fmt: skip
    page = render(rows, order=("decode", "catalog"), summaries={"decode": "Per-image CPU cost."})
    assert page.index("## decode") < page.index("## catalog")
    decode = page[page.index("## decode") : page.index("## catalog")]
    assert "Per-image CPU cost." in decode
    assert "**quick run** 2026-12-07 08:40:00 UTC, commit `abc1234`, AMD EPYC, 2 cores, torch 2.5.1" in decode
    assert "**load average 4.33 → 5.10**" in decode
    assert "Parameters: repeats=2" in decode  # shared by every row; images=20 only by two
    assert "| case | metric | value | unit | parameters |" in decode
    assert "| content hash | per_image | 2.65 | ms | images=20 |" in decode
    assert "| decode, a \\| b | per_image | 10.22 | ms | images=20 |" in decode
    assert "| speed-up | speed_up | 2.26 | x | - |" in decode
    catalog = page[page.index("## catalog") :]
    assert "**full run**" in catalog and "**load average 8.00 → 9.50**" in catalog
    assert (
        "| case | metric | value | unit |\n" in catalog
        and "| siblings | per_request | 115.3 | us |" in catalog
    )


def test_numbers_keep_a_useful_precision():
    assert [number(v) for v in (52224, 1234.5678, 2.65336, 0.0123456, 0.99, -3.0)] == [
        "52,224", "1,234.6", "2.65", "0.0123", "0.99", "-3",
    ]  # fmt: skip
