"""The explorer on a user's own plate, in real headless Chromium against a real ``mae-search serve``: a
folder of TIFFs with names that say nothing and a CSV of treatment and dose (no plate, no wells), its
embedding map made by ``mae-index map``; and the start page of the BBBC006 examples' index.

Screenshots go to /tmp/explorer-shots/ (looked at by hand; the assertions are on the DOM).
"""

from __future__ import annotations

import csv
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SYNTH_DIR
from tests.retriever.test_web import MODEL, _card_ids, _open, _wait, browser, explorer, page  # noqa: F401
from tests.support.serve import start_serve

SHOTS = Path("/tmp/explorer-shots")
TREATMENT = {"a01": "drug_a", "a02": "dmso", "a09": "drug_b", "a11": "drug_c"}
DOSE = {"13": "0.1", "16": "1", "24": "10"}


def _shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / name), full_page=True)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """``(base_url, index_dir, records by id)``: own TIFFs (``cell_NN.tif``) + a treatment/dose CSV,
    indexed, mapped and served."""
    from click.testing import CliRunner

    from indexer.cli import main
    from indexer.stores.faiss.store import FaissStore

    tmp = tmp_path_factory.mktemp("own")
    (tmp / "images").mkdir()
    rows = []
    for i, p in enumerate(sorted(SYNTH_DIR.glob("BBBC006_v1_images_z_*/*.tif"))):
        name = f"cell_{i:02d}.tif"
        shutil.copy(p, tmp / "images" / name)
        rows.append({"path": f"images/{name}", "treatment": TREATMENT[p.name.split("_")[1]],
                     "dose": DOSE[p.parent.name[-2:]]})  # fmt: skip
    with open(tmp / "plate.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "treatment", "dose"])
        w.writeheader()
        w.writerows(rows)
    r = CliRunner().invoke(
        main, ["build", str(tmp / "images"), "--metadata", str(tmp / "plate.csv"), "--index", str(tmp / "idx"),
               "--model", str(MODEL), "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["map", "--index", str(tmp / "idx")])
    assert r.exit_code == 0, r.output
    store = FaissStore(tmp / "idx", read_only=True)
    records = {r.id: r for r in store.get(store.ids())}
    assert all(r.well is None and r.plate is None for r in records.values())
    proc, port = start_serve(tmp / "idx")
    yield f"http://127.0.0.1:{port}", tmp / "idx", records
    proc.terminate()
    proc.wait(timeout=30)


def test_start_page_shows_images_without_a_query(explorer, page):  # noqa: F811
    url, _, records = explorer
    _open(page, url + "/")
    _wait(page, "document.querySelectorAll('.card').length > 0")
    ids = _card_ids(page)
    # Before: "no query yet" and no card at all. After: a page of the indexed images.
    assert len(ids) == min(60, len(records)) and set(map(int, ids)) <= set(records)
    # The first rows' thumbnails decoded (the rest load lazily as they scroll into view).
    _wait(
        page,
        "[...document.querySelectorAll('.card img')].slice(0, 9).every(i => i.complete && i.naturalWidth > 0)",
    )
    assert page.text_content("#status").startswith(f"{len(records)} images match")
    assert page.is_hidden("#plate-panel") and not page.errors
    _shot(page, "start-page.png")
    # Search with a filter and no query browses what the filter keeps.
    page.select_option("#f-channel", "w1")
    page.click("#apply")
    page.wait_for_url("**channel=w1**")
    want = sum(1 for r in records.values() if r.channel == "w1")
    _wait(page, f"document.querySelector('#status').textContent.startsWith('{want} images match')")
    shown = [records[int(i)].channel for i in _card_ids(page)]
    assert shown and set(shown) == {"w1"}
    # One click on an image queries with it.
    target = _card_ids(page)[2]
    page.click(f".card[data-id='{target}']")
    page.wait_for_url(f"**id={target}**")
    _wait(
        page,
        f"document.querySelector('.card .score') && document.querySelector('.card').dataset.id === '{target}'",
    )


def test_tag_filter_narrows_the_gallery_and_is_kept_in_the_url(own, page):  # noqa: F811
    url, _, records = own
    _open(page, url + "/")
    _wait(page, "document.querySelectorAll('.card').length > 0")
    assert len(_card_ids(page)) == len(records)
    # Cards show the image's tags, not a row of dashes for the fields it does not have.
    metas = page.eval_on_selector_all(".card .meta", "ms => ms.map(m => m.textContent)")
    assert all("–" not in m and "treatment=" in m and "dose=" in m for m in metas)
    options = page.eval_on_selector_all(
        "#tag-filters select[data-key='treatment'] option", "os => os.map(o => o.value)"
    )
    assert options == ["", "dmso", "drug_a", "drug_b", "drug_c"]
    page.select_option("#tag-filters select[data-key='treatment']", "dmso")
    page.click("#apply")
    page.wait_for_url("**tag=treatment%3Ddmso**")
    dmso = {str(i) for i, r in records.items() if dict(r.tags)["treatment"] == "dmso"}
    _wait(page, f"document.querySelectorAll('.card').length === {len(dmso)}")
    assert set(_card_ids(page)) == dmso and len(dmso) < len(records)
    _shot(page, "tag-filter.png")
    # The URL alone gives the same view (a link to it, a reload).
    page.goto(page.url)
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
    _wait(page, f"document.querySelectorAll('.card').length === {len(dmso)}")
    assert set(_card_ids(page)) == dmso
    assert page.input_value("#tag-filters select[data-key='treatment']") == "dmso"
    # Two keys: AND across them.
    query = urllib.parse.urlencode([("tag", "treatment=dmso"), ("tag", "dose=1")])
    _open(page, f"{url}/?{query}")
    both = {str(i) for i, r in records.items() if dict(r.tags) == {"treatment": "dmso", "dose": "1"}}
    _wait(page, f"document.querySelector('#status').textContent.startsWith('{len(both)} images match')")
    assert set(_card_ids(page)) == both


def test_no_plate_map_without_wells_and_percentiles_on_cards(own, page):  # noqa: F811
    from indexer.stores.faiss.store import FaissStore
    from retriever import score_context

    url, index_dir, records = own
    query = sorted(records)[0]
    _open(page, f"{url}/?id={query}&k=5")
    _wait(page, "document.querySelectorAll('.card .pct').length === 5")
    # Before: an empty 384-well plate drawn for data that has no wells. After: no plate panel at all.
    assert page.is_hidden("#plate-panel")
    assert page.eval_on_selector_all(".plate .cell", "cs => cs.length") == 0
    assert page.is_hidden("#f-well") and page.is_hidden("#f-plate")
    ctx = score_context.load_or_compute(FaissStore(index_dir, read_only=True), index_dir)
    shown = page.eval_on_selector_all(".card", "cs => cs.map(c => [Number(c.querySelector('.score').textContent), "
                                      "Number(c.querySelector('.pct').dataset.pct)])")  # fmt: skip
    for score, pct in shown:
        assert pct == pytest.approx(float(ctx.percentile([score])[0]), abs=0.11)
    assert "nearest neighbour" in page.text_content("#score-note") and not page.errors


def test_embedding_map_draws_and_a_click_queries(own, page):  # noqa: F811
    from indexer.vectors.layout import load_map

    url, index_dir, records = own
    emap = load_map(index_dir)
    assert emap is not None and set(emap.ids.tolist()) == set(records)
    _open(page, url + "/?color=tag:treatment")
    _wait(page, f"document.querySelector('#map-canvas').dataset.drawn === '{len(records)}'")
    assert page.input_value("#map-colour") == "tag:treatment"
    legend = page.eval_on_selector_all("#map-legend span", "ss => ss.map(s => s.textContent)")
    assert legend == ["dmso", "drug_a", "drug_b", "drug_c"]
    page.select_option("#map-colour", "tag:dose")  # another colouring, kept in the URL
    page.wait_for_url("**color=tag%3Adose**")
    _wait(
        page,
        "[...document.querySelectorAll('#map-legend span')].map(s => s.textContent).join() === '0.1,1,10'",
    )
    # Click the point farthest from any other, so the nearest point to the click is that one.
    d = np.linalg.norm(emap.xy[:, None] - emap.xy[None], axis=-1) + np.eye(len(emap.xy)) * 9
    target = str(emap.ids[int(np.argmax(d.min(axis=1)))])
    x, y = page.evaluate(f"EmbeddingMap.where('{target}')")
    box = page.locator("#map-canvas").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_url(f"**id={target}**")
    _wait(
        page, f"document.querySelector('.card') && document.querySelector('.card').dataset.id === '{target}'"
    )
    _wait(page, "document.querySelector('#map-canvas').dataset.marked === '10'")
    _shot(page, "embedding-map.png")
    assert not page.errors


def test_api_facets_browse_and_map_answer_and_refuse(own):
    import json
    import urllib.error
    import urllib.request

    url, _, records = own

    def call(path, body=None):
        req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    status, body = call("/api/facets")
    tags = json.loads(body)["tags"]
    assert status == 200 and [v["value"] for v in tags["dose"]] == ["0.1", "1", "10"]
    assert sum(v["count"] for v in tags["treatment"]) == len(records)
    status, body = call("/api/browse", {"where": {"tags": ["dose=10"]}, "limit": 2})
    got = json.loads(body)
    assert got["total"] == sum(1 for r in records.values() if dict(r.tags)["dose"] == "10")
    assert all(r["tags"]["dose"] == "10" for r in got["records"]) and len(got["records"]) <= 2
    status, body = call("/api/map/points")
    n = len(body) // 16
    assert status == 200 and sorted(np.frombuffer(body[: 8 * n], "<i8").tolist()) == sorted(records)
    assert call("/api/map/colours?by=tag:dose")[0] == 200
    for path, body in (("/api/map/colours?by=path", None), ("/api/browse", {"limit": 0}),
                       ("/api/browse", {"where": {"colour": ["red"]}}), ("/api/browse", {"page": 2})):  # fmt: skip
        status, text = call(path, body)
        assert status == 400, (path, body, text)
