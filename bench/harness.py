"""The bench harness: what a group yields, the rows a run writes, and where they go.

A group is a module of :mod:`bench.groups` with a frozen ``Params`` dataclass (its defaults are the full
measurement), ``QUICK`` (the same at small N) and ``run(params)``, which yields :class:`Result` s. The
harness stamps each with the group's parameters and the conditions it ran under (commit, CPU, torch,
load average at the start and end of the run) and writes them as :class:`Row` s, one JSON object a line,
to ``bench/results/GROUP.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

#: Paths whose changes do not make a run's commit "dirty": what the runs themselves write.
_OUTPUTS = ("bench/results", "docs/performance/results.md")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Result:
    """One measured number of a group: ``value`` in ``unit`` of ``metric`` for ``case``; ``parameters``
    are what distinguishes this case beyond the group's own (e.g. a batch size of a sweep)."""

    case: str
    metric: str
    value: float
    unit: str
    parameters: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise TypeError(f"{self.case} / {self.metric}: value must be a number, not {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"{self.case} / {self.metric}: value {self.value} is not a finite number")


#: The fields of a row, in the order they are written.
ROW_FIELDS = ("group", "case", "parameters", "metric", "value", "unit", "commit", "cpu", "torch",
              "load_start", "load_end", "ran_at", "quick")  # fmt: skip


@dataclass(frozen=True)
class Row:
    """A result as stored: the group's parameters merged with the case's, and the run's conditions."""

    group: str
    case: str
    parameters: Mapping[str, Scalar]
    metric: str
    value: float
    unit: str
    commit: str
    cpu: str
    torch: str
    load_start: float
    load_end: float
    ran_at: str
    quick: bool

    def __post_init__(self) -> None:
        Result(self.case, self.metric, self.value, self.unit)  # the same checks on the value
        for name in ("load_start", "load_end"):
            if not isinstance(getattr(self, name), int | float):
                raise TypeError(f"{name} must be a number")

    def to_json(self) -> str:
        """One line of JSON, fields in :data:`ROW_FIELDS` order."""
        return json.dumps({k: getattr(self, k) for k in ROW_FIELDS})

    @classmethod
    def from_dict(cls, d: Mapping) -> Row:
        """A row from its JSON object; a missing or unknown field is an error (names it)."""
        missing, extra = set(ROW_FIELDS) - set(d), set(d) - set(ROW_FIELDS)
        if missing or extra:
            raise ValueError(f"bad result row: missing {sorted(missing)}, unknown {sorted(extra)}")
        return cls(**{k: d[k] for k in ROW_FIELDS})


@dataclass(frozen=True)
class Conditions:
    """What a run ran on: commit (``+dirty`` with uncommitted changes), CPU, torch version."""

    commit: str
    cpu: str
    torch: str


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def conditions() -> Conditions:
    """The commit of this checkout, this machine's CPU model and core count, the installed torch."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", ".", *(f":!{p}" for p in _OUTPUTS)):
        commit += "+dirty"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "none"
    return Conditions(commit, f"{model}, {os.cpu_count()} cores", torch)


def load_average() -> float:
    """The 1-minute load average now."""
    return round(os.getloadavg()[0], 2)


def portable(value: Scalar) -> Scalar:
    """A parameter as stored: a path inside this checkout relative to it (rows compare across machines)."""
    if isinstance(value, str) and value.startswith(f"{REPO}/"):
        return value[len(str(REPO)) + 1 :]
    return value


def stamp(group: str, params: object, quick: bool, results: Callable[[], Iterable[Result]]) -> list[Row]:
    """Run ``results()`` and return its results as rows, with the load average before and after."""
    cond = conditions()
    ran_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = load_average()
    got = list(results())
    end = load_average()
    base = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
    return [
        Row(group=group, case=r.case, parameters={k: portable(v) for k, v in {**base, **r.parameters}.items()},
            metric=r.metric,
            value=float(f"{r.value:.6g}"), unit=r.unit, commit=cond.commit, cpu=cond.cpu, torch=cond.torch,
            load_start=start, load_end=end, ran_at=ran_at, quick=quick)
        for r in got
    ]  # fmt: skip


def read_rows(path: Path) -> list[Row]:
    """The rows of one results file (none if it does not exist)."""
    if not path.exists():
        return []
    return [Row.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[Row]) -> None:
    """Store a run's ``rows`` in ``path``, replacing the rows of an earlier run of the same kind (quick
    or full): the file keeps the latest quick run and the latest full run of its group."""
    quick = {r.quick for r in rows}
    kept = [r for r in read_rows(path) if r.quick not in quick]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(r.to_json() + "\n" for r in [*kept, *rows]))
    tmp.replace(path)


def runs(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """The rows of each run (one ``ran_at``), in the order they were stored."""
    by_run: dict[tuple, list[Row]] = {}
    for r in rows:
        by_run.setdefault((r.group, r.ran_at, r.quick), []).append(r)
    yield from by_run.values()
