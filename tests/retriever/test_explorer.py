"""The explorer's server side without a browser: rendering, the cache, the plate map, backends, reports."""

from __future__ import annotations

import http.client
import io
import json

import numpy as np
import pytest
import torch

from eval import live
from indexer.core.config import IntensityConfig
from indexer.images.decode import decode_tiff
from indexer.model.preprocess import intensity_window
from indexer.stores.faiss.store import FaissStore
from retriever import explorer, render
from retriever.http.app import App
from retriever.http.service import QueryService
from retriever.search import Retriever
from tests.retriever.test_server_hardening import _start, index_dir  # noqa: F401


@pytest.mark.parametrize(
    "cfg",
    [
        IntensityConfig(),
        IntensityConfig(low=0.5, high=99.0),
        IntensityConfig(mode="fixed", window=(100, 3000)),
    ],
)
def test_render_window_is_the_preprocessing_window(real_images, cfg):
    image = decode_tiff(real_images[0].read_bytes())
    lo, hi = intensity_window(torch.from_numpy(image.astype(np.int32))[None], cfg)
    assert render.window(image, cfg) == pytest.approx((float(lo), float(hi)), abs=1e-3)


def test_png_decodes_to_the_windowed_pixels(real_images):
    from PIL import Image

    image = decode_tiff(real_images[0].read_bytes())
    cfg = IntensityConfig()
    png = render.render_png(image, cfg, size=128)
    got = np.asarray(Image.open(io.BytesIO(png)))
    lo, hi = render.window(image, cfg)
    assert got.shape == (86, 116)  # 520 x 696 shrunk by whole 6 x 6 blocks
    np.testing.assert_array_equal(got, render.to_uint8(render.downscale(image, 128), lo, hi))
    assert got.min() == 0 and got.max() > 200  # block means soften the brightest pixels


def test_image_cache_is_a_byte_bounded_lru():
    cache = explorer.ImageCache(max_bytes=10)
    cache.put(("a",), b"1234")
    cache.put(("b",), b"1234")
    assert cache.get(("a",)) == b"1234"  # a is now the most recent
    cache.put(("c",), b"1234")  # 12 bytes > 10: the least recent (b) goes
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    assert (cache.hits, cache.misses) == (3, 1)


def test_plate_map_is_the_best_score_per_well(index_dir):  # noqa: F811
    store = FaissStore(index_dir, read_only=True)
    catalog = explorer.Catalog(store)
    ids = np.sort(store.ids())
    vectors = store.get_vectors(ids)
    q = vectors[3]
    out = catalog.plate_map(q, None, ("w2",), (1,))
    truth: dict[str, float] = {}
    for rec, v in zip(store.get(ids), vectors):
        if rec.channel == "w2" and rec.site == 1:
            truth[rec.well] = max(truth.get(rec.well, -2.0), float(v @ q))
    assert len(out["wells"]) == 384
    assert {w for w, s in out["wells"].items() if s is not None} == set(truth)
    for w, s in truth.items():
        assert out["wells"][w] == pytest.approx(s, abs=1e-5)
    assert out["images"] == {w: sum(1 for r in store.get(ids) if r.well == w and r.site == 1) for w in truth}


def _get(srv, path, body=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_backend_choice_reports_and_the_perturb_plugin(redis_config, real_images, tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from indexer.cli import main
    from indexer.stores.redis.store import RedisStore

    idx = tmp_path / "idx"
    r = CliRunner().invoke(
        main, ["build", str(real_images[0].parent), "--index", str(idx), "--model", str(tiny_model_dir),
               "--device", "cpu", "--no-progress", "--redis-url", redis_config.url, "--redis-index",
               redis_config.index_name],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    (tmp_path / "robustness-run").mkdir()
    (tmp_path / "robustness-run" / "report.html").write_text("<h1>report</h1>")
    (tmp_path / "robustness-run" / "secret.key").write_text("no")
    redis = RedisStore(redis_config)
    faiss = FaissStore(idx, read_only=True)
    service = QueryService(Retriever.open(redis, device="cpu"))
    service.add_backend(faiss)
    app = App(service, service.limits)
    explorer.register(app, service, explorer.Catalog(redis, faiss), explorer.find_reports(idx, []),
                      sorted(service.backends))  # fmt: skip
    live.register(app)
    srv, close = _start(service, app=app)
    try:
        status, data = _get(srv, "/api/config")
        cfg = json.loads(data)
        assert cfg["backends"] == ["faiss", "redis"] and cfg["robustness"] is True
        assert cfg["reports"] == [{"index": 0, "name": "robustness-run"}]
        some = str(int(faiss.ids()[4]))  # ids go as strings too: JavaScript loses digits past 2**53
        tops = {}
        for backend in ("faiss", "redis"):
            status, data = _get(
                srv, "/query/ids", json.dumps({"ids": [some], "k": 5, "backend": backend}), "POST"
            )
            assert status == 200, data
            tops[backend] = [h["id"] for h in json.loads(data)["results"][0]]
        assert tops["faiss"] == tops["redis"] and tops["faiss"][0] == int(some)
        status, data = _get(srv, "/query/ids", json.dumps({"ids": [some], "backend": "milvus"}), "POST")
        assert status == 400 and b"backend" in data
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
        conn.request("GET", "/reports/0/report.html")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"<h1>report</h1>"
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")  # no script at all
        conn.close()
        for bad in ("/reports/0/secret.key", "/reports/0/../idx/manifest.json", "/reports/1/report.html"):
            assert _get(srv, bad)[0] == 404, bad
        status, data = _get(srv, "/api/perturb", json.dumps({"id": some, "perturbation": "melt"}), "POST")
        assert status == 400 and b"unknown perturbation" in data
        status, data = _get(srv, "/api/perturb", json.dumps({"id": some, "perturbation": "brightness",
                                                               "severity": 2, "k": 5}), "POST")  # fmt: skip
        out = json.loads(data)
        assert status == 200 and out["value"] == 1.25 and out["image"].startswith("data:image/png;base64,")
        assert len(out["clean"]) == len(out["perturbed"]) == 5
    finally:
        close()
        redis.close()
