import base64
import http.client
import json
import threading

import pytest

from indexer.core.records import MetadataFilter
from indexer.model.presets import create_model
from indexer.stores.faiss.store import FaissStore
from retriever.http.client import query_server
from retriever.http.service import QueryService
from retriever.http.transport import make_server
from retriever.search import QueryOptions, Retriever


@pytest.fixture(scope="module")
def server(tmp_path_factory, real_images):
    from click.testing import CliRunner

    from indexer.cli import main

    tmp = tmp_path_factory.mktemp("srv")
    model = create_model(tmp / "model", "test", seed=0)
    r = CliRunner().invoke(
        main, ["build", str(real_images[0].parent), "--index", str(tmp / "idx"), "--model", str(model),
               "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    service = QueryService(Retriever.open(FaissStore(tmp / "idx", read_only=True), device="cpu"))
    srv = make_server(service, "127.0.0.1", 0, max_body=2 * 1024 * 1024)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    # as `mae-search serve` does: model work on one compute thread, HTTP on others
    stop = threading.Event()
    compute = threading.Thread(target=service.run_compute, args=(stop,), name="compute", daemon=True)
    compute.start()
    yield srv
    stop.set()
    compute.join(timeout=10)
    srv.shutdown()
    srv.server_close()


def _request(srv, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


def test_health_and_stats(server):
    status, data = _request(server, "GET", "/health")
    assert status == 200 and data["status"] == "ok" and data["count"] == 20 and data["dim"] == 32
    _request(server, "GET", "/health")
    status, stats = _request(server, "GET", "/stats")
    assert status == 200 and stats["requests"] >= 2 and "p50_ms" in stats


def test_query_by_upload_returns_itself(server, real_images):
    status, data = _request(server, "POST", "/query?k=3&site=2", real_images[0].read_bytes())
    assert status == 200, data
    hits = data["hits"]
    assert hits[0]["path"] == str(real_images[0]) and hits[0]["score"] >= 0.999
    assert len(hits) == 3 and all(h["site"] == 2 for h in hits)


def test_batch_and_ids_and_client(server, real_images):
    body = json.dumps(
        {"images": [base64.b64encode(p.read_bytes()).decode() for p in real_images[:2]], "k": 2}
    )
    status, data = _request(server, "POST", "/query/batch", body)
    assert status == 200 and [r[0]["path"] for r in data["results"]] == [str(p) for p in real_images[:2]]
    first_id = data["results"][0][0]["id"]
    status, data = _request(server, "POST", "/query/ids", json.dumps({"ids": [first_id], "k": 1}))
    assert status == 200 and data["results"][0][0]["id"] == first_id
    url = f"http://127.0.0.1:{server.server_port}"
    results = query_server(url, real_images[:1], QueryOptions(k=1))
    assert results[0][0]["path"] == str(real_images[0])


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("POST", "/query", b"definitely not a tiff", 400),
        ("POST", "/query?k=zero", b"x", 400),
        ("POST", "/query/batch", b"{not json", 400),
        ("POST", "/query/batch", json.dumps({"images": ["@@@"]}).encode(), 400),
        ("POST", "/query/ids", json.dumps({"ids": [12345]}).encode(), 404),
        ("POST", "/query/ids", json.dumps({"ids": "x"}).encode(), 400),
        ("GET", "/nope", None, 404),
    ],
)
def test_bad_requests_get_4xx_never_500(server, method, path, body, status):
    got, data = _request(server, method, path, body)
    assert got == status and "error" in data


def test_oversize_upload_is_refused_before_reading_it(server):
    # Claim 3 MB (limit 2 MB) but send a few bytes: the server answers 413 from the header alone.
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    conn.request("POST", "/query", body=b"x" * 10, headers={"Content-Length": str(3 * 1024 * 1024)})
    resp = conn.getresponse()
    assert resp.status == 413 and b"exceeds" in resp.read()
    conn.close()


def test_model_work_runs_on_the_compute_thread(server, real_images):
    service = server.service
    seen = []
    embed = service.retriever.encoder.embed

    def spy(x):
        seen.append(threading.current_thread().name)
        return embed(x)

    service.retriever.encoder.embed = spy
    try:
        status, data = _request(server, "POST", "/query?k=1", real_images[1].read_bytes())
    finally:
        service.retriever.encoder.embed = embed
    assert status == 200 and data["hits"][0]["path"] == str(real_images[1])
    assert seen == ["compute"]


def test_service_without_a_compute_loop_runs_inline_and_loop_stops_cleanly(server, real_images):
    service = QueryService(server.service.retriever)
    hits = service.query_images([real_images[2].read_bytes()], QueryOptions(k=1))
    assert hits[0][0]["path"] == str(real_images[2])
    stop = threading.Event()
    loop = threading.Thread(target=service.run_compute, args=(stop, 0.01))
    loop.start()
    service.warm_up()
    assert service.query_ids([hits[0][0]["id"]], QueryOptions(k=1))[0][0]["id"] == hits[0][0]["id"]
    stop.set()
    loop.join(timeout=5)
    assert not loop.is_alive()
    assert service.query_images([real_images[2].read_bytes()], QueryOptions(k=1))[0][0]["score"] > 0.999


def test_the_client_sends_source_and_tag_filters_and_the_server_applies_them(server, real_images):
    """`mae-search query --server URL --tag KEY=VALUE` (and a provenance filter) reach the server's stores."""
    url = f"http://127.0.0.1:{server.server_port}"
    [real] = query_server(url, [real_images[0]], QueryOptions(k=3, where=MetadataFilter(source=("real",))))
    assert len(real) == 3 and all(h["source"] == "real" for h in real)
    [synthetic] = query_server(
        url, [real_images[0]], QueryOptions(k=3, where=MetadataFilter(source=("synthetic",)))
    )
    assert synthetic == []
    [tagged] = query_server(
        url, [real_images[0]], QueryOptions(k=3, where=MetadataFilter(tags=("plate_map=p1",)))
    )
    assert tagged == []  # no image carries that tag: an empty answer, not a refused request
    status, data = _request(server, "POST", "/query?k=2&source=real", real_images[0].read_bytes())
    assert status == 200 and [h["source"] for h in data["hits"]] == ["real", "real"]
