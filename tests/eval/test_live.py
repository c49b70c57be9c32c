"""The explorer's live robustness panel (eval/live.py) scores a query as `mae-eval robustness` does by
default: the query's own site (other z-slices and channels) leaves both lists (``--exclude site``)."""

import json

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
