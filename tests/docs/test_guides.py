"""Every guide opens with "First steps": those commands run for real here, in the reader's folder where the
README's quick start already ran, and print what the guide says they print."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.docs.blocks import blocks, same_output, section
from tests.docs.conftest import runnable
from tests.docs.runner import REPO, Ran, Workdir

pytestmark = pytest.mark.timeout(3600)

GUIDES = REPO / "docs" / "guides"


def first_steps(guide: str):
    """The commands of a guide's "First steps" block (the first shell block under that heading)."""
    found = blocks(section((GUIDES / guide).read_text(), "First steps"))
    assert found, f"docs/guides/{guide} has no shell block under '## First steps'"
    return list(found[0].commands)


#: What each guide's first steps must print, in order: (command start, exit code, patterns in its output).
EXPECTED = {
    "build.md": [
        ("mae-index build", 0, [r"index now holds 30"]),
        ("mae-index build", 0, [r"Indexed 0 images", r"skipped 30 already indexed"]),
        ("mae-search query", 0, [r'"rank": 1', r'"score": 1\.0', r'"channel": "w2"']),
    ],
    "faiss-kinds.md": [
        ("mae-index build", 0, [r"index now holds 30"]),
        ("mae-index info", 0, [r"faiss:\s+HNSW32"]),
        ("mae-index verify", 0, [r"recall@10 of the faiss HNSW32 index vs exact", r"^OK$"]),
    ],
    "maintenance.md": [
        ("mae-index verify --index runs/quickstart", 0, [r"^OK$"]),
        ("cp", 0, []),
        ("truncate", 0, []),
        (
            "mae-index verify --index runs/damaged",
            1,
            [r"shards/part-000000.parquet has 100 bytes", r"^DAMAGED$"],
        ),
        ("mae-index repair", 0, [r"Rebuilt runs/damaged: 30 images .*30 from index.faiss"]),
        ("mae-index build", 0, [r"index now holds 30"]),
        ("mae-index verify --index runs/damaged", 0, [r"^images: 30$", r"^OK$"]),
    ],
    "robustness.md": [("mae-eval robustness", 0, [r"Report: .*report.html"])],
    "export.md": [
        ("mae-index export", 0, [r"Wrote runs/quickstart\.parquet: 30 images x 192 features \(parquet\)"]),
        ("python -c", 0, [r"^\(30, 202\)$", r"^\s*well\s+site\s+channel\s+z\s+f0$"]),
        ("mae-index export", 0, [r"Wrote runs/quickstart-wells\.csv: 27 well profiles x 192 features"]),
    ],
    "explorer.md": [
        ("mae-index map", 0, [r"Laid out 30 images \(opentsne\)", r"runs/quickstart/map\.npz"]),
        ("mae-search serve", 0, [r"Serving 30 images"]),
        ("curl -s http://127.0.0.1", 0, [r'"status": "ok"', r'"count": 30']),
        ("curl -s -X POST", 0, [r'"hits"', r'"score": 1\.0']),
        ("mae-search query", 0, [r"^\s+1\s+1\.0000\s"]),
    ],
    "pretraining.md": [
        ("mae-index pretrain", 0, []),
        ("mae-index build", 0, [r"index now holds 20"]),
        ("mae-eval reconstruct", 0, []),
    ],
    "phenotype.md": [
        ("mae-index synth", 0, []),
        ("mae-index init-model", 0, []),
        ("python bench/bench_phenotype.py", 0, [r"nuclear"]),
    ],
}


def _check(guide: str, ran: list[Ran]) -> None:
    expected = EXPECTED[guide]
    assert len(ran) == len(expected), [r.command for r in ran]
    for r, (start, rc, patterns) in zip(ran, expected):
        assert r.command.startswith(start), (r.command, start)
        assert r.rc == rc, f"{r.command}: exit {r.rc}, expected {rc}\n{r.output[-3000:]}"
        for pattern in patterns:
            assert re.search(pattern, r.output, re.M), f"{r.command}: no {pattern!r} in\n{r.output[-3000:]}"


def test_every_guide_has_first_steps_that_a_test_runs():
    names = {p.name for p in GUIDES.glob("*.md")}
    for name in names:
        first_steps(name)
    assert names == {*EXPECTED, "own-data.md", "redis.md", "ray.md"}


@pytest.mark.parametrize("guide", sorted(EXPECTED))
def test_first_steps(guide, quickstart, reader):
    # The robustness guide repeats the quick start's command: its result is the quick start's own run.
    commands = runnable(first_steps(guide))
    ran = [quickstart[c] if c in quickstart else None for c in commands]
    if None in ran:
        ran = reader.run_all(commands)
    _check(guide, ran)
    if guide == "robustness.md":
        assert (reader.root / "runs" / "quickstart-report" / "report.html").is_file()
    if guide == "export.md":
        header = (reader.root / "runs" / "quickstart-wells.csv").read_text().splitlines()[0]
        assert header.startswith("plate,well,channel,count,f0,f1,"), header
    if guide == "explorer.md":
        assert (reader.root / "runs" / "quickstart" / "map.npz").is_file()
    if guide == "pretraining.md":
        assert (reader.root / "runs" / "reconstruction.png").stat().st_size > 1000
        assert (
            json.loads((reader.root / "runs" / "my-mae" / "config.json").read_text())["model_type"]
            == "vit_mae"
        )


def test_own_data_prints_what_the_guide_shows(tmp_path):
    # A folder of its own: the README's own-data test builds the same runs/own in the shared one, and a
    # second build there would print "Indexed 0 images" (whichever order the tests run in).
    steps = first_steps("own-data.md")
    assert steps[0].text == "cat examples/own-data/plate.csv" and len(steps) == 5
    ran = Workdir(tmp_path / "reader").run_all([c.text for c in steps])
    for step, r in zip(steps, ran):
        assert r.rc == 0, f"{r.command}\n{r.output[-3000:]}"
        assert not same_output(step.shown, r.output), (
            f"{r.command}: the guide shows lines it does not print: {same_output(step.shown, r.output)}\n"
            f"it printed:\n{r.output[-3000:]}"
        )


@pytest.mark.redis
def test_redis_first_steps(redis_url, tmp_path):
    reader = Workdir(tmp_path / "reader", env={"MAE_REDIS_URL": redis_url})
    commands = runnable(first_steps("redis.md"))
    try:
        build, query, query_faiss, verify = reader.run_all(commands)
        for r in (build, query, query_faiss, verify):
            assert r.rc == 0, f"{r.command}\n{r.output[-3000:]}"
        assert re.search(r"Stores: .*Redis index 'mae-idx-[0-9a-f]{8}'", build.output), build.output
        assert re.search(r"^answered by Redis index 'mae-idx-[0-9a-f]{8}'", query.output, re.M)
        assert "answered by FAISS folder runs/idx" in query_faiss.output
        # rank, score, percentile (a whole number, or empty), well: the table's first columns
        tops = [re.findall(r"^\s+1\s+(\d\.\d{4})\s+(?:\d+\s+)?([A-P]\d\d)\s", q.output, re.M)
                for q in (query, query_faiss)]  # fmt: skip
        assert tops[0] == tops[1] == [("1.0000", "A14")], tops  # the same image first from either store
        assert re.search(r"^OK$", verify.output, re.M)
    finally:
        _drop_redis_index(reader.root / "runs" / "idx", reader)


def _drop_redis_index(index: Path, reader: Workdir) -> None:
    manifest = index / "manifest.json"
    if manifest.is_file():
        name = json.loads(manifest.read_text())["redis"]["index"]
        reader.run(f"mae-index drop-redis --redis-index {name}")


@pytest.mark.ray
@pytest.mark.slow
def test_ray_first_steps(tmp_path):
    pytest.importorskip("ray")
    # Without --ray-address Ray joins any cluster already running on the machine (another test's, on a
    # shared machine, whose actors then die at start): RAY_ADDRESS=local keeps to the runtime the guide means.
    reader = Workdir(tmp_path / "reader", env={"RAY_ADDRESS": "local"})
    build, verify = reader.run_all(runnable(first_steps("ray.md")))
    assert build.rc == 0, build.output[-3000:]
    assert "index now holds 20" in build.output
    assert verify.rc == 0 and re.search(r"^OK$", verify.output, re.M), verify.output
