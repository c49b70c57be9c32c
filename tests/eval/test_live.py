"""The explorer's live robustness panel (eval/live.py) scores a query as `mae-eval robustness` does by
default: the query's own site (other z-slices and channels) leaves both lists (``--exclude site``)."""

import json
import math

import pytest

from eval import gallery, live
from eval.robustness import RobustnessConfig, run_robustness
from indexer.core.config import BuildConfig, SourceConfig
from indexer.stores.faiss.store import FaissStore
from retriever.http.app import App
from retriever.http.service import QueryService
from retriever.search import Retriever
from tests.retriever.test_explorer import _get
from tests.retriever.test_server_hardening import _start


@pytest.fixture(scope="module")
def stack_index(tmp_path_factory, tiny_model_dir):
    """32 synthetic images: 4 wells x 2 sites x 2 channels x 2 z-slices (4 per site)."""
    from indexer.bbbc006.synthetic import SyntheticConfig, generate
    from indexer.core.config import ModelConfig
    from indexer.ingest.local import build_index
    from indexer.model.encoder import ViTMAEEncoder

    tmp = tmp_path_factory.mktemp("live")
    generate(SyntheticConfig(out_dir=tmp / "synth", wells=("A01", "A02", "A03", "A04"), sites=(1, 2), channels=(1, 2),
                             z_slices=(16, 20), seed=0))  # fmt: skip
    encoder = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    cfg = BuildConfig(
        sources=SourceConfig(paths=(tmp / "synth",)), index_dir=tmp / "idx", model=encoder.config
    )
    with FaissStore(tmp / "idx", dim=encoder.dim) as store:
        assert build_index(cfg, [store], encoder=encoder).indexed == 32
    return tmp / "idx"


@pytest.mark.parametrize("catalog", [False, True])
def test_the_panel_excludes_the_query_site_like_mae_eval_by_default(stack_index, catalog, monkeypatch):
    """With the explorer's catalog on the app (as `mae-search serve` builds it), the panel reads the
    records from it instead of a copy of its own; the answers are the same. A request never runs
    mae-eval's exclusions over every record (O(N) per request): the catalog's grouped lookup does."""
    store = FaissStore(stack_index, read_only=True)
    retriever = Retriever.open(store, device="cpu")
    query = store.get([int(store.ids()[5])])[0]
    site = {r.id for r in store.get(store.ids()) if (r.well, r.site) == (query.well, query.site)}
    assert len(site) == 4
    ref = run_robustness(retriever, RobustnessConfig(perturbations=("brightness",), severities=(2,), k=5,
                                                     query_ids=(query.id,), n_queries=1))  # fmt: skip
    assert ref.config.exclude == gallery.DEFAULT_EXCLUDE == "site"
    (row,) = ref.rows

    def every_record(*args, **kwargs):
        raise AssertionError("a live request read every record (gallery.exclusions)")

    monkeypatch.setattr(gallery, "exclusions", every_record)
    service = QueryService(retriever)
    app = App(service, service.limits)
    if catalog:
        from retriever.catalog import Catalog

        app.catalog = Catalog(store)
    live.register(app)
    srv, close = _start(service, app=app)
    try:
        status, data = _get(srv, "/api/perturbations")
        assert json.loads(data)["defaults"]["exclude"] == "site"
        body = {"id": str(query.id), "perturbation": "brightness", "severity": 2, "k": 5}
        status, data = _get(srv, "/api/perturb", json.dumps(body), "POST")
        assert status == 200, data
        out = json.loads(data)
        assert out["exclude"] == "site" and out["candidates"] == row["candidates"] == 28
        assert not site & {h["id"] for h in out["clean"] + out["perturbed"]}
        for m in ("self_rank", "overlap_at_k", "jaccard_at_k", "rbo", "kendall_tau"):
            assert out["metrics"][m] == pytest.approx(row[m]), m
        status, data = _get(srv, "/api/perturb", json.dumps({**body, "exclude": "none"}), "POST")
        assert status == 200 and json.loads(data)["clean"][0]["id"] == query.id  # itself first, as before
        status, data = _get(srv, "/api/perturb", json.dumps({**body, "exclude": "plate"}), "POST")
        assert status == 400 and b"none, image, site, well" in data
        if catalog:
            assert app.catalog._groups is not None  # built by the panel's first request
    finally:
        close()


def _plain(retriever, vector, drop, k):
    """A plain query's hits for ``vector``: every hit's id, rank and score, the dropped ids cut out, ranked
    1..k as the panel ranks them within the gallery left."""
    from retriever.search import QueryOptions

    (hits,) = retriever.search_vectors(vector[None, :], QueryOptions(k=retriever.store.count()))
    kept = [h for h in hits if h.id not in drop][:k]
    return [(n + 1, h.id, h.score) for n, h in enumerate(kept)]


def test_the_panel_s_lists_equal_plain_queries_and_mae_eval_row_by_row(stack_index):
    """Before: in the clean list an image found in both lists showed the perturbed query's score and
    rank, the answer had no chance level, and defocus_z was never offered. After: each list is its own
    query's plain search, row by row; the metrics equal run_robustness's; the chance levels are
    eval.chance's for the gallery left; defocus_z, offered on this z-stack, equals mae-eval's row."""
    from eval import chance, perturb
    from eval.robustness import NATURAL
    from indexer.images.sources import load_image

    store = FaissStore(stack_index, read_only=True)
    retriever = Retriever.open(store, device="cpu")
    records = {r.id: r for r in store.get(store.ids())}
    query = next(r for r in records.values() if (r.well, r.site, r.channel, r.z) == ("A02", 1, "w2", 16))
    site = {i for i, r in records.items() if (r.well, r.site) == (query.well, query.site)}
    service = QueryService(retriever)
    app = App(service, service.limits)
    live.register(app)
    srv, close = _start(service, app=app)
    try:
        body = {"id": str(query.id), "perturbation": "brightness", "severity": 2, "k": 5}
        status, data = _get(srv, "/api/perturb", json.dumps(body), "POST")
        assert status == 200, data
        out = json.loads(data)
        raw = load_image(query.path)
        image = perturb.apply("brightness", raw, 2, perturb.perturbation_rng(0, query.id, "brightness", 2))
        clean_vec, pert_vec = retriever.embed_arrays([raw, image])
        for shown, vector in ((out["clean"], clean_vec), (out["perturbed"], pert_vec)):
            plain = _plain(retriever, vector, site, 5)
            assert [(h["rank"], h["id"]) for h in shown] == [(r, i) for r, i, _ in plain]
            assert [h["score"] for h in shown] == pytest.approx([s for _, _, s in plain], abs=1e-6)
        common = {h["id"] for h in out["clean"]} & {h["id"] for h in out["perturbed"]}
        assert common  # an image in both lists shows a score per list
        (row,) = run_robustness(retriever, RobustnessConfig(perturbations=("brightness",), severities=(2,), k=5,
                                                            query_ids=(query.id,), n_queries=1)).rows  # fmt: skip
        for m in ("self_rank", "overlap_at_k", "jaccard_at_k", "rbo", "kendall_tau"):
            expected = None if isinstance(row[m], float) and math.isnan(row[m]) else row[m]  # JSON's null
            assert out["metrics"][m] == pytest.approx(expected), m
        assert out["chance"]["overlap_at_k"] == pytest.approx(chance.overlap(row["candidates"], 5)) == 5 / 28
        assert out["chance"]["rbo"] == pytest.approx(chance.rbo(row["candidates"], 5, 0.9))
        assert out["chance"]["self_at_1"] == pytest.approx(1 / row["self_candidates"])

        offered = json.loads(_get(srv, "/api/perturbations")[1])["perturbations"]
        assert [p["name"] for p in offered][-1] == NATURAL
        defocus = {**body, "perturbation": NATURAL, "severity": 4}  # z 20 against z 16
        status, data = _get(srv, "/api/perturb", json.dumps(defocus), "POST")
        assert status == 200, data
        out = json.loads(data)
        ref = run_robustness(retriever, RobustnessConfig(perturbations=(NATURAL,), k=5, query_ids=(query.id,),
                                                         n_queries=1)).rows  # fmt: skip
        (row,) = [r for r in ref if r["severity"] == 4]
        assert out["candidates"] == row["candidates"] and out["value"] == row["value"] == 8.0
        for m in ("self_rank", "overlap_at_k", "jaccard_at_k", "rbo", "kendall_tau"):
            expected = None if isinstance(row[m], float) and math.isnan(row[m]) else row[m]  # JSON's null
            assert out["metrics"][m] == pytest.approx(expected), m
        partner = store.get_vectors([row["slice_id"]])[0]
        plain = _plain(retriever, partner, site | {row["slice_id"]}, 5)
        assert [h["id"] for h in out["perturbed"]] == [i for _, i, _ in plain]
        status, data = _get(srv, "/api/perturb", json.dumps({**defocus, "severity": 1}), "POST")
        assert status == 400 and b"severities there: 4" in data
    finally:
        close()
