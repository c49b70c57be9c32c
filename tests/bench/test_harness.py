"""bench/harness.py and ``python -m bench``: the row schema, where rows go, the command line's refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from bench import groups
from bench.harness import REPO, ROW_FIELDS, Result, Row, read_rows, stamp, write_rows


def row(**kw) -> Row:
    base = dict(group="decode", case="decode, libtiff", parameters={"repeats": 2}, metric="per_image",
                value=2.5, unit="ms", commit="abc1234", cpu="AMD EPYC, 2 cores", torch="2.5.1",
                load_start=4.33, load_end=5.1, ran_at="2026-12-07T08:40:00Z", quick=True)  # fmt: skip
    return Row(**{**base, **kw})


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True)


def test_a_row_has_the_schema_fields_in_order_and_round_trips_through_json():
    r = row()
    line = r.to_json()
    assert list(json.loads(line)) == list(ROW_FIELDS) == [
        "group", "case", "parameters", "metric", "value", "unit", "commit", "cpu", "torch",
        "load_start", "load_end", "ran_at", "quick",
    ]  # fmt: skip
    assert Row.from_dict(json.loads(line)) == r


@pytest.mark.parametrize("value", [math.nan, math.inf, "2.5", None, True])
def test_a_result_must_be_a_finite_number(value):
    with pytest.raises((TypeError, ValueError), match="decode"):
        Result("decode", "per_image", value, "ms")


def test_a_stored_row_with_a_missing_or_unknown_field_is_refused_by_name():
    d = json.loads(row().to_json())
    del d["load_end"]
    with pytest.raises(ValueError, match="load_end"):
        Row.from_dict(d)
    with pytest.raises(ValueError, match="extra"):
        Row.from_dict({**json.loads(row().to_json()), "extra": 1})


@dataclass(frozen=True)
class P:
    n: int = 3
    name: str = "x"


def test_stamp_merges_the_group_and_case_parameters_and_records_the_conditions():
    rows = stamp(
        "g", P(), True, lambda: [Result("a", "m", 1.23456789, "s", {"batch": 8}), Result("b", "m", 2, "")]
    )
    assert [r.parameters for r in rows] == [{"n": 3, "name": "x", "batch": 8}, {"n": 3, "name": "x"}]
    assert rows[0].value == 1.23457  # six significant digits
    first = rows[0]
    assert first.torch == metadata.version("torch") and first.cpu.endswith("cores")
    assert first.commit.split("+")[0] and first.commit != "unknown"
    assert first.load_start >= 0 and first.load_end >= 0 and first.quick and first.ran_at.endswith("Z")
    assert {r.ran_at for r in rows} == {first.ran_at}


def test_paths_inside_the_checkout_are_stored_relative_to_it():
    @dataclass(frozen=True)
    class M:
        model: str = str(REPO / "examples" / "models" / "mae-tiny-bbbc006")
        data: str = "/elsewhere/data"

    (r,) = stamp("g", M(), False, lambda: [Result("a", "m", 1, "s")])
    assert r.parameters == {"model": "examples/models/mae-tiny-bbbc006", "data": "/elsewhere/data"}


def test_a_run_replaces_the_earlier_run_of_its_kind_and_keeps_the_other(tmp_path):
    path = tmp_path / "decode.jsonl"
    write_rows(path, [row(quick=False, value=1.0), row(quick=False, value=1.5)])
    write_rows(path, [row(quick=True, value=2.0)])
    write_rows(path, [row(quick=True, value=3.0)])
    assert sorted((r.quick, r.value) for r in read_rows(path)) == [(False, 1.0), (False, 1.5), (True, 3.0)]


def test_overrides_are_parsed_as_their_fields_types_and_unknown_ones_refused():
    assert groups.with_overrides(P(), ["n=7", "name=y"]) == P(7, "y")
    with pytest.raises(ValueError, match="n, name"):
        groups.with_overrides(P(), ["bogus=1"])
    with pytest.raises(ValueError, match="not a int"):
        groups.with_overrides(P(), ["n=many"])


def test_list_names_every_group_module():
    modules = {p.stem for p in (REPO / "bench" / "groups").glob("*.py")} - {"__init__"}
    assert modules == set(groups.NAMES)
    out = bench("list")
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == list(groups.NAMES)


def test_an_unknown_group_or_parameter_is_a_usage_error(tmp_path):
    out = bench("run", "nope", "--results", str(tmp_path))
    assert out.returncode == 2
    assert "unknown group 'nope'" in out.stderr and "decode" in out.stderr and "catalog" in out.stderr
    out = bench("run", "decode", "--quick", "--set", "bogus=1", "--results", str(tmp_path))
    assert out.returncode == 2 and "repeats" in out.stderr
    assert not list(Path(tmp_path).iterdir())  # nothing written


@pytest.mark.parametrize("name", groups.NAMES)
def test_every_group_has_full_and_quick_parameters_and_a_run(name):
    module = groups.load(name)
    assert groups.summary(module) and callable(module.run)
    assert dataclasses.is_dataclass(module.Params) and module.Params.__dataclass_params__.frozen
    assert isinstance(module.QUICK, module.Params) and module.QUICK != module.Params()
