"""The explorer's browse gallery (no query) and tag facets, on record tables without a browser."""

from __future__ import annotations

import numpy as np

from indexer.core.records import ImageRecord, MetadataFilter
from indexer.stores.faiss.store import FaissStore
from indexer.stores.record_table import RecordTable
from retriever import browse
from retriever.catalog import Catalog


def _table(n=250):
    treat = ["dmso", "drug_a", "drug_b"]
    doses = ["10", "0.1", "1", "2.5"]
    return RecordTable(
        ImageRecord(
            id=10_000 + 7 * i, path=f"{i}.tif", tags={"treatment": treat[i % 3], "dose": doses[i % 4]}
        )
        for i in range(n)
    )


def test_pages_of_one_seed_cover_every_match_once():
    table = _table()
    where = MetadataFilter(tags=("treatment=dmso",))
    want = {r.id for r in table.values() if dict(r.tags)["treatment"] == "dmso"}
    seen = []
    offset = 0
    while True:
        page = browse.browse(table, where, seed=5, offset=offset, limit=30)
        assert page["total"] == len(want)
        if not page["records"]:
            break
        seen += [r["id"] for r in page["records"]]
        offset += 30
    assert len(seen) == len(want) and set(seen) == want
    again = [r["id"] for r in browse.browse(table, where, 5, 0, 30)["records"]]
    other = [r["id"] for r in browse.browse(table, where, 6, 0, 30)["records"]]
    assert again == seen[:30] and other != again  # stable for a seed, another order for another
    assert seen != sorted(seen)  # shuffled, not in id order


def test_shuffled_page_is_the_sorted_mixed_order():
    ids = np.arange(1, 1001, dtype=np.int64)
    key = browse._mix(ids, 3)
    order = ids[np.lexsort((ids, key))]
    assert browse.shuffled_page(ids, 3, 100, 50).tolist() == order[100:150].tolist()
    assert browse.shuffled_page(ids, 3, 990, 50).tolist() == order[990:].tolist()
    assert browse.shuffled_page(ids, 3, 1000, 50).tolist() == []


def test_facets_list_every_tag_key_with_counts_in_numeric_order(tmp_path):
    store = FaissStore(tmp_path / "idx", dim=4)
    store.add(np.eye(4, dtype=np.float32)[np.arange(12) % 4], list(_table(12).values()))
    facets = Catalog(store).facets()
    assert facets["tags"] == {
        "dose": [{"value": v, "count": 3} for v in ("0.1", "1", "2.5", "10")],
        "treatment": [{"value": v, "count": 4} for v in ("dmso", "drug_a", "drug_b")],
    }
