"""The README as a reader meets it: short, its links lead somewhere, its set-up commands are CI's, and its
quick start, explorer and own-data commands run for real (offline: the shipped examples and tiny model)
with the results it describes."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest

from tests.docs.blocks import blocks, section
from tests.docs.conftest import NOT_RUN_HERE, readme_blocks, runnable
from tests.docs.runner import REPO

pytestmark = pytest.mark.timeout(3600)

README = REPO / "README.md"
QUERY = (
    "examples/bbbc006/BBBC006_v1_images_z_16/"
    "mcf-z-stacks-03212011_a14_s2_w237947fb8-714e-450b-85ae-aa924fe725e9.tif"
)


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (mkdocs) and GitHub give a heading of plain words."""
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _anchors(md: str) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+?)\s*$", md, re.M)}


def test_the_readme_is_at_most_300_lines():
    n = len(README.read_text().splitlines())
    assert n <= 300, f"README.md has {n} lines; move detail into docs/"


def test_every_relative_link_of_the_readme_leads_to_a_file_and_heading():
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        f = REPO / path
        if not f.exists():
            broken.append(target)
        elif anchor and anchor not in _anchors(f.read_text()):
            broken.append(target)
    assert not broken, f"README links to missing files or headings: {broken}"


def test_setup_commands_are_what_ci_runs():
    setup = blocks(section(README.read_text(), "Set up and test"))
    commands = [c.text for b in setup for c in b.commands]
    assert commands == ["bash scripts/install.sh", ".venv/bin/python -m pytest -q"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for c in commands:  # verbatim, perhaps timed
        assert any(line in (c, f"time {c}") for line in ci), f"{c!r} is not a line of .ci/run"
    assert any(line.endswith("mkdocs build --strict -d /tmp/mae-microscopy-site") for line in ci)


def test_every_command_not_run_here_is_still_shown():
    pages = [README, REPO / "docs" / "index.md", *sorted((REPO / "docs" / "guides").glob("*.md"))]
    shown = {c.text for p in pages for b in blocks(p.read_text()) for c in b.commands}
    assert set(NOT_RUN_HERE) <= shown, f"stale NOT_RUN_HERE entries: {set(NOT_RUN_HERE) - shown}"


def test_every_readme_block_is_run_by_a_test_here():
    """Set-up (CI), quick start, explorer, own data: the four blocks the tests below run."""
    kinds = []
    for b in readme_blocks():
        texts = " ".join(c.text for c in b.commands)
        kinds.append(
            "setup" if "install.sh" in texts else "serve" if texts.startswith("mae-search serve")
            else "own" if "own-data" in texts else "quickstart" if "runs/quickstart" in texts else texts
        )  # fmt: skip
    assert kinds == ["setup", "quickstart", "serve", "own"]


def test_the_docs_home_shows_the_readme_s_quick_start():
    home = [runnable(b.commands) for b in blocks((REPO / "docs" / "index.md").read_text())]
    readme = [runnable(b.commands) for b in readme_blocks()]
    assert home == readme[1:3], "docs/index.md's quick start differs from the README's"


def test_the_quick_start_runs(quickstart, reader):
    build, info, query, robustness = quickstart.values()
    for r in quickstart.values():
        assert r.rc == 0, f"{r.command}\n{r.output[-3000:]}"
    assert "index now holds 30" in build.output and "rejected 0" in build.output
    assert re.search(r"^images:\s+30$", info.output, re.M)
    # The query image first, with score 1.0000, as the README says; then 4 neighbours.
    rows = [line.split() for line in query.output.splitlines() if re.match(r"\s+\d+\s+\d\.\d{4}\s", line)]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0][1] == "1.0000" and rows[0][-1] == QUERY
    report = reader.root / "runs" / "quickstart-report"
    assert f"Report: {report.relative_to(reader.root)}/report.html" in robustness.output or (
        "report.html" in robustness.output
    )
    data = json.loads((report / "report.json").read_text())
    assert (report / "report.html").stat().st_size > 10_000
    assert {r["perturbation"] for r in data["summary"]} >= {"gaussian_noise", "gaussian_blur", "contrast"}


def test_the_explorer_serves_the_page_and_links_the_report(quickstart, reader):
    (block,) = [b for b in readme_blocks() if b.commands[0].text.startswith("mae-search serve")]
    try:
        (serve,) = [reader.run(c) for c in runnable(block.commands)]
        assert serve.rc == 0, serve.output
        assert re.search(
            r"Serving 30 images of FAISS folder runs/quickstart on http://127.0.0.1:\d+", serve.output
        )
        status, page = reader.get("/")
        assert status == 200 and b"<script" in page and b"app.js" in page
        status, config = reader.get("/api/config")
        reports = json.loads(config)["reports"]
        assert any("quickstart-report" in json.dumps(r) for r in reports), reports
    finally:
        reader.stop()


def test_own_data_indexes_with_its_csv(reader):
    (block,) = [b for b in readme_blocks() if any("own-data" in c.text for c in b.commands)]
    cat, build, query = reader.run_all(runnable(block.commands))
    for r in (cat, build, query):
        assert r.rc == 0, f"{r.command}\n{r.output[-3000:]}"
    assert cat.output.splitlines()[0] == "path,well,site,channel,phenotype"
    assert "index now holds 7" in build.output  # five files: the stack's three planes are three images
    rows = [line.split() for line in query.output.splitlines() if re.match(r"\s+\d+\s+\d\.\d{4}\s", line)]
    # Filtered by the CSV's phenotype column: the two "dense" images only, both in A01.
    assert [(r[0], r[3]) for r in rows] == [("1", "A01"), ("2", "A01")]  # rank, score, percentile, well
    assert {r[-1].rsplit("/", 1)[-1] for r in rows} == {
        "A01_dense_nuclei_8bit.tif",
        "A01_dense_actin_float.tif",
    }
