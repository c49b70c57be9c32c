"""Issue 31, items 4 and 15 (server side): filter lists, numbers and ids are checked before any work.

b690aef: a 30 MB JSON filter list cost up to 870 MB per request; ``site: Infinity`` / ``1e999`` in
``/api/plate`` answered 500 and ``10**30`` 200; ``/thumb/%B2`` (a superscript digit) answered 500.
"""

from __future__ import annotations

import json
import tracemalloc
from urllib.parse import parse_qs

import numpy as np
import pytest
import tifffile

from indexer.stores.faiss.store import FaissStore
from retriever.cli import build_app
from retriever.http.app import Request
from retriever.http.service import QueryService
from retriever.search import Retriever


@pytest.fixture(scope="module")
def app(tmp_path_factory, real_images, tiny_model_dir):
    from click.testing import CliRunner

    from indexer.cli import main

    tmp = tmp_path_factory.mktemp("limits")
    big = tmp / "big.tif"  # 4096 x 4096, 16 MP
    rng = np.random.default_rng(0)
    tifffile.imwrite(big, rng.integers(0, 4096, (4096, 4096), dtype=np.uint16), photometric="minisblack")
    r = CliRunner().invoke(main, ["build", *map(str, real_images[:6]), str(big), "--index", str(tmp / "idx"),
                                  "--model", str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    store = FaissStore(tmp / "idx", read_only=True)
    service = QueryService(Retriever.open(store, device="cpu", index_dir=tmp / "idx"))
    application = build_app(service, tmp / "idx", [])
    records = store.get(store.ids())
    application.some_id = next(r.id for r in records if not r.path.endswith("big.tif"))
    application.big_id = next(r.id for r in records if r.path.endswith("big.tif"))
    return application


def _call(app, method, path, body=b"", query=""):
    req = Request(method, path, parse_qs(query, keep_blank_values=True), body, {})
    # The compute thread is this one in tests: run queued work inline.
    app.service.compute = lambda fn, *args: fn(*args)
    resp = app.handle(req)
    return resp.status, json.loads(resp.body) if resp.content_type == "application/json" else resp.body


@pytest.mark.parametrize("path", ["/thumb/%B2", "/thumb/\u00b2", "/image/\u00b9\u00b2", "/api/record/\u00b2"])
def test_superscript_digit_ids_are_a_400(app, path):
    status, body = _call(app, "GET", path)
    assert status == 400 and "bad id" in body["error"], body  # b690aef: 500


def test_superscript_ids_in_json_are_a_400(app):
    status, body = _call(app, "POST", "/query/ids", json.dumps({"ids": ["\u00b2"]}).encode())
    assert status == 400 and "bad id" in body["error"]


@pytest.mark.parametrize(
    "site,says",
    [
        ("Infinity", "site must be a whole number in 0..1000000"),
        ("1e999", "site must be a whole number in 0..1000000"),
        (str(10**30), "site must be a whole number in 0..1000000"),
        ("-1", "site must be a whole number"),
        ("1.5", "site must be a whole number"),
    ],
)
def test_plate_site_out_of_range_is_a_400(app, site, says):
    body = b'{"id": "%d", "site": [%s]}' % (app.some_id, site.encode())
    status, out = _call(app, "POST", "/api/plate", body)
    assert status == 400 and says in out["error"], out  # b690aef: 500 (Infinity, 1e999), 200 (10**30)


def test_plate_with_a_good_site_answers(app):
    status, out = _call(app, "POST", "/api/plate", b'{"id": "%d", "site": [1, 2]}' % app.some_id)
    assert status == 200 and out


@pytest.mark.parametrize("field", ["z", "site", "column", "z_min"])
def test_query_ids_numbers_are_checked(app, field):
    where = {field: 1e999 if field != "z_min" else -3}
    body = json.dumps({"ids": [str(app.some_id)], "where": where}).replace("Infinity", "1e999").encode()
    status, out = _call(app, "POST", "/query/ids", body)
    assert status == 400 and f"{field} must be a whole number" in out["error"], out


def test_k_of_1e999_is_a_400(app):
    status, out = _call(app, "POST", "/query/ids", b'{"ids": ["%d"], "k": 1e999}' % app.some_id)
    assert status == 400 and "k must be a whole number in 1..2147483647" in out["error"]


def test_a_30mb_filter_list_is_refused_before_the_work(app):
    values = b"[" + b",".join([b"1"] * 15_000_000) + b"]"  # 30 MB of JSON
    ids_body = b'{"ids": ["%d"], "where": {"site": %s}}' % (app.some_id, values)
    plate_body = b'{"id": "%d", "channel": %s}' % (app.some_id, values.replace(b"1", b'"a"', 1))
    peaks = {}
    for name, path, body in (("ids", "/query/ids", ids_body), ("plate", "/api/plate", plate_body)):
        tracemalloc.start()
        status, out = _call(app, "POST", path, body)
        peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert status in (400, 413), out
        assert (
            "over the limit of 1048576 bytes" in out["error"]
            or "at most 1000 per filter field" in out["error"]
        )
    assert peaks["ids"] < 5, peaks  # 413 from the body's size, unparsed
    assert peaks["plate"] < 400, peaks  # parsed (it may carry an image), refused before the work
    print("peak MB per request:", {k: round(v, 1) for k, v in peaks.items()})


@pytest.mark.parametrize("query", ["", "size=4096"])
def test_the_full_view_of_a_large_image_is_bounded(app, query):
    import struct

    status, png = _call(app, "GET", f"/image/{app.big_id}", query=query)
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (2048, 2048)  # b690aef: 4096 x 4096


# ------------------------------------------------------------------ item 10: perturbations and queries
def test_perturb_refuses_an_image_over_its_pixel_limit(app):
    body = json.dumps({"id": str(app.big_id), "perturbation": "gaussian_blur", "severity": 1, "k": 2,
                       "exclude": "none"}).encode()  # fmt: skip
    status, out = _call(app, "POST", "/api/perturb", body)
    assert status == 400 and "16.0 M pixels; the live panel perturbs images of at most 4 M" in out["error"]


def test_one_perturbation_per_client_and_a_bounded_number_at_once():
    from eval.live import PerturbSlots
    from retriever.http.app import ClientError

    slots = PerturbSlots(2, ClientError)
    with slots.take("10.0.0.1"):
        with pytest.raises(ClientError, match="already running for this client") as e:
            slots.take("10.0.0.1")
        assert e.value.status == 429
        with slots.take("10.0.0.2"), pytest.raises(ClientError):
            slots.take("10.0.0.3")  # two running: the server's share is taken
    with slots.take("10.0.0.1"):  # released on exit
        pass


def test_queued_queries_run_before_queued_perturbations(app):
    import threading
    import time

    service = QueryService(app.service.retriever)
    done: list[str] = []
    gate = threading.Event()
    jobs = [threading.Thread(target=service.compute, args=(gate.wait,))]  # holds the compute thread
    jobs += [threading.Thread(target=lambda n=n: service.compute(done.append, f"perturb{n}", priority=1))
             for n in range(3)]  # fmt: skip
    jobs += [threading.Thread(target=lambda: service.compute(done.append, "query"))]
    stop = threading.Event()
    service._compute_thread = threading.current_thread()  # queue without running until all are in
    for t in jobs:
        t.start()
        time.sleep(0.05)
    service._compute_thread = None
    runner = threading.Thread(target=service.run_compute, args=(stop,))
    runner.start()
    gate.set()
    for t in jobs:
        t.join(10)
    stop.set()
    runner.join(10)
    assert done[0] == "query" and sorted(done[1:]) == ["perturb0", "perturb1", "perturb2"]  # b690aef: FIFO
