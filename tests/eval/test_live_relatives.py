"""The live panel's exclusions (eval/live.py): from the explorer's columnar catalog, grouped by the mode's
keys, in the size of the query's group; the same as :func:`eval.gallery.exclusions` (over every record, the
reference) for every mode, query and missing-metadata case."""

from __future__ import annotations

import numpy as np
import pytest

from eval import gallery
from indexer.stores.faiss.store import FaissStore
from retriever.catalog import Catalog
from tests.retriever.test_catalog import DIM, _best_time, _store, _vectors, fixture_records


@pytest.fixture
def catalog(tmp_path):
    records = fixture_records()
    with FaissStore(tmp_path / "idx", dim=DIM) as writer:
        writer.add(_vectors(len(records)), records)
    store = FaissStore(tmp_path / "idx", read_only=True)
    yield Catalog(store), records
    store.close()


@pytest.mark.parametrize("mode", gallery.EXCLUDE)
def test_the_grouped_lookup_excludes_what_mae_eval_excludes(catalog, mode):
    """Every record as a query, one at a time as the panel asks, and all at once; plus an id the index
    does not hold (it falls back to itself, as in mae-eval)."""
    catalog, records = catalog
    queries = [r.id for r in records] + [5]
    reference = gallery.exclusions(records, queries, mode)
    assert gallery.exclusions_from(catalog.relatives, queries, mode) == reference
    for q in queries[::7]:
        assert gallery.exclusions_from(catalog.relatives, [q], mode) == gallery.exclusions(records, [q], mode)
    if mode in ("site", "well"):
        # the fixture has queries that fall back (a key unknown) and groups of several images
        assert 0 < len(reference.fallback) < len(queries)
        assert max(len(v) for v in reference.excluded.values()) > 4


def test_the_lookup_is_by_a_prefix_of_plate_well_site(catalog):
    catalog, records = catalog
    with pytest.raises(ValueError, match="plate, well, site"):
        catalog.relatives(records[0].id, ("well", "site"))


@pytest.mark.parametrize("mode", ["site", "well"])
def test_a_live_request_s_exclusions_cost_its_group_not_the_index(tmp_path, mode):
    """3,072 and 30,720 records with the same group sizes (4 per site, 8 per well): the time per query
    must not grow with the index (mae-eval's exclusions read every record: ~10x here; bound 3x)."""
    per_call = {}
    for n in (3_072, 30_720):
        store = _store(tmp_path, n)
        catalog = Catalog(store)
        ids = store.ids()[:: max(1, n // 60)][:60].tolist()

        def lookup(q: int, catalog=catalog) -> frozenset[int]:
            return gallery.exclusions_from(catalog.relatives, [q], mode).excluded[q]

        assert len(lookup(ids[0])) == {"site": 4, "well": 8}[mode]  # and the index is built
        per_call[n] = _best_time(lookup, ids)
        store.close()
    ratio = per_call[30_720] / per_call[3_072]
    assert ratio < 3, (
        f"{per_call[3_072] * 1e6:.0f} -> {per_call[30_720] * 1e6:.0f} us per query ({ratio:.1f}x)"
    )


def test_the_reference_scan_does_grow_with_the_index(tmp_path):
    """The timing above can tell: mae-eval's reference, given every record per query as the panel did,
    grows with the index on the same data (bound: at least 3x for 10x the records)."""
    per_call = {}
    for n in (3_072, 30_720):
        store = _store(tmp_path, n)
        records = store.get(store.ids())
        ids = np.asarray([r.id for r in records])[:: max(1, n // 10)][:10].tolist()
        per_call[n] = _best_time(
            lambda q, records=records: gallery.exclusions(records, [q], "site"), ids, repeats=3
        )
        store.close()
    assert per_call[30_720] / per_call[3_072] > 3
