"""Issue 31, items 4 and 15 (server side): filter lists, numbers and ids are checked before any work.

b690aef: a 30 MB JSON filter list cost up to 870 MB per request; ``site: Infinity`` / ``1e999`` in
``/api/plate`` answered 500 and ``10**30`` 200; ``/thumb/%B2`` (a superscript digit) answered 500.
"""

from __future__ import annotations

import json
import tracemalloc
from urllib.parse import parse_qs

import pytest

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
    r = CliRunner().invoke(main, ["build", *map(str, real_images[:6]), "--index", str(tmp / "idx"), "--model",
                                  str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    store = FaissStore(tmp / "idx", read_only=True)
    service = QueryService(Retriever.open(store, device="cpu", index_dir=tmp / "idx"))
    application = build_app(service, tmp / "idx", [])
    application.some_id = int(store.ids()[0])
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
    assert status == 400 and "k must be a whole number" in out["error"]


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
