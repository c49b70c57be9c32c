"""The query server under hostile or unlucky use: bombs, oversized requests, HTTP abuse, a store outage.

Each test here failed on the server as it was before the hardening (see the commit message for the
before/after log); the limits are the ones in :mod:`indexer.core.limits`.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest
import tifffile

from indexer.stores.faiss.store import FaissStore
from retriever.http.service import QueryService
from retriever.http.transport import make_server
from retriever.search import QueryOptions, Retriever
from tests.conftest import zero_bomb


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, real_images, tiny_model_dir):
    from click.testing import CliRunner

    from indexer.cli import main

    tmp = tmp_path_factory.mktemp("hard")
    r = CliRunner().invoke(
        main, ["build", str(real_images[0].parent), "--index", str(tmp / "idx"), "--model",
               str(tiny_model_dir), "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return tmp / "idx"


def _start(service, **kwargs):
    srv = make_server(service, "127.0.0.1", 0, **kwargs)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    compute = threading.Thread(target=service.run_compute, args=(stop,), name="compute", daemon=True)
    compute.start()

    def close():
        stop.set()
        compute.join(timeout=10)
        srv.shutdown()
        srv.server_close()

    return srv, close


@pytest.fixture(scope="module")
def server(index_dir):
    service = QueryService(Retriever.open(FaissStore(index_dir, read_only=True), device="cpu"))
    srv, close = _start(service, max_body=8 * 1024 * 1024, request_timeout=2.0)
    yield srv
    close()


def _request(srv, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, (json.loads(raw) if raw else {})


def _tiff(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, compression="lzw", photometric="minisblack")
    return buf.getvalue()


def _ids(srv) -> list[int]:
    store = srv.service.retriever.store
    return [int(i) for i in store.ids()]


# --- memory and CPU bombs (issue 16 item 6) --------------------------------------------------------


def test_pixel_bomb_upload_is_refused_from_its_header(server):
    bomb = zero_bomb(16384)  # 512 MB decoded from ~430 KB
    assert len(bomb) < 600_000
    t0 = time.perf_counter()
    status, data = _request(server, "POST", "/query?k=1", bomb)
    assert status == 400 and "pixels" in data["error"], data
    assert time.perf_counter() - t0 < 1.0


def test_compression_bomb_under_the_pixel_cap_is_refused(server):
    bomb = zero_bomb(8192)  # 64 MP: within the pixel cap, but 128 MB from ~110 KB
    status, data = _request(server, "POST", "/query?k=1", bomb)
    assert status == 400 and "compression ratio" in data["error"], data


def test_batch_of_bombs_is_refused_without_decoding_them(server):
    bomb = base64.b64encode(zero_bomb(16384)).decode()
    t0 = time.perf_counter()
    status, data = _request(server, "POST", "/query/batch", json.dumps({"images": [bomb] * 12, "k": 1}))
    assert status == 400 and "image 0" in data["error"] and "pixels" in data["error"]
    assert time.perf_counter() - t0 < 2.0


def test_too_many_images_in_a_batch(server):
    small = base64.b64encode(_tiff(np.full((32, 32), 100, np.uint16))).decode()
    status, data = _request(server, "POST", "/query/batch", json.dumps({"images": [small] * 65, "k": 1}))
    assert status == 400 and "at most 64 images" in data["error"], data


def test_too_many_ids_and_too_many_results(server):
    ids = _ids(server)
    many = (ids * 60)[:1001]
    status, data = _request(server, "POST", "/query/ids", json.dumps({"ids": many, "k": 1}))
    assert status == 400 and "at most 1000 ids" in data["error"], data
    status, data = _request(server, "POST", "/query/ids", json.dumps({"ids": ids[:3], "k": 5000}))
    assert status == 400 and "k x queries" in data["error"], data
    status, data = _request(server, "POST", "/query?k=20000", b"x")
    assert status == 400 and "k x queries" in data["error"], data


def test_a_batch_is_decoded_as_a_stream(server):
    # 16 images of 1024 x 1024 (2 MB decoded each): all at once would hold >= 32 MB of pixels.
    rng = np.random.default_rng(0)
    blobs = [_tiff((rng.integers(0, 8, (1024, 1024)) * 500 + i).astype(np.uint16)) for i in range(16)]
    service = server.service
    service.query_images(blobs[:1], QueryOptions(k=1))  # warm caches outside the measurement
    tracemalloc.start()
    try:
        results = service.query_images(blobs, QueryOptions(k=1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(results) == 16
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.1f} MB"


# --- HTTP (issue 16 item 7, issue 15 item 11) ------------------------------------------------------


def _responses_on(sock: socket.socket, wait: float = 1.5) -> bytes:
    sock.settimeout(wait)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    return out


def test_a_body_left_unread_is_never_run_as_a_request(server):
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    for path in (b"/query?k=zero", b"/nope", b"/query?wel=Z99"):
        with socket.create_connection(("127.0.0.1", server.server_port)) as s:
            s.sendall(
                b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled
            )  # fmt: skip
            out = _responses_on(s)
        assert out.count(b"HTTP/1.1 ") == 1, out
        assert out.startswith(b"HTTP/1.1 4"), out


def test_keep_alive_connection_works_after_a_400(server, real_images):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request("POST", "/query?k=zero", body=real_images[0].read_bytes())
    r = conn.getresponse()
    assert r.status == 400
    r.read()
    conn.request("GET", "/health")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["count"] == 20
    conn.close()


def test_slowloris_connections_hold_no_threads(server):
    before = threading.active_count()
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.server_port))
            s.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            socks.append(s)
        time.sleep(0.5)
        grown = threading.active_count() - before
        t0 = time.perf_counter()
        status, data = _request(server, "GET", "/health", timeout=5)
        assert status == 200 and time.perf_counter() - t0 < 2.0
        assert grown <= 20, f"{grown} threads for 200 idle connections"
    finally:
        for s in socks:
            s.close()


def test_a_declared_body_that_never_arrives_times_out(server):
    # 1.5 MB declared (under the 8 MB limit), 10 bytes sent: the server gives up after its timeout.
    with socket.create_connection(("127.0.0.1", server.server_port)) as s:
        s.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: 1500000\r\n\r\n0123456789")
        t0 = time.perf_counter()
        s.settimeout(15)
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            pytest.fail("the server still waits for a body that never comes")
        except ConnectionResetError:
            pass
        assert time.perf_counter() - t0 < 10


def test_headers_dribbled_forever_are_cut_off(server):
    # One header byte a second keeps a connection active; the request deadline still closes it.
    with socket.create_connection(("127.0.0.1", server.server_port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        t0 = time.perf_counter()
        closed = False
        while time.perf_counter() - t0 < 12:
            try:
                s.sendall(b"X-a: b\r\n")
            except OSError:
                closed = True
                break
            s.settimeout(1.0)
            try:
                if s.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:  # reset by the server
                closed = True
                break
        assert closed, "a connection that never finishes its headers is kept open"


# --- errors (issue 16 item 8, issue 15 items 2 and 11) ---------------------------------------------


@pytest.mark.parametrize(
    "path,body,needle",
    [
        ("/query/ids", b"[" * 100_000, "JSON"),
        ("/query/ids", b'{"ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
        ("/query/ids", json.dumps({"ids": ["abc"]}).encode(), "ids"),
        ("/query/ids", json.dumps({"ids": [1.5]}).encode(), "ids"),
        ("/query/ids", json.dumps({"ids": [True]}).encode(), "ids"),
        ("/query/ids", json.dumps({"ids": [-1]}).encode(), "ids"),
        ("/query/ids", json.dumps({"ids": [2**64]}).encode(), "ids"),
        ("/query/ids", json.dumps({"ids": [1], "wher": {"well": "A01"}}).encode(), "wher"),
        ("/query/ids", json.dumps({"ids": [1], "where": {"wel": "A01"}}).encode(), "wel"),
        ("/query?wel=Z99", b"x", "wel"),
        ("/query?k=1&kk=2", b"x", "kk"),
    ],
)
def test_malformed_requests_get_400(server, path, body, needle):
    status, data = _request(server, "POST", path, body)
    assert status == 400 and needle in data["error"], (status, data)


def test_unknown_parameter_lists_the_known_ones(server, real_images):
    status, data = _request(server, "POST", "/query?wel=Z99", real_images[0].read_bytes())
    assert status == 400
    assert "unknown parameter 'wel'" in data["error"] and "well" in data["error"]


def test_redis_outage_is_503_and_health_names_the_store(start_redis, tmp_path, real_images, tiny_model_dir):
    from click.testing import CliRunner

    from indexer.cli import main
    from indexer.core.config import RedisConfig
    from indexer.stores.redis.store import RedisStore
    from retriever.cli import main as search_main

    redis = start_redis()
    r = CliRunner().invoke(
        main, ["build", str(real_images[0].parent), "--index", str(tmp_path / "idx"), "--model",
               str(tiny_model_dir), "--device", "cpu", "--no-progress", "--redis-url", redis.url,
               "--redis-index", "outage"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = RedisConfig(url=redis.url, index_name="outage", retries=0, socket_timeout=1.0)
    store = RedisStore(cfg)
    service = QueryService(Retriever.open(store, device="cpu"))
    srv, close = _start(service)
    try:
        assert _request(srv, "GET", "/health")[0] == 200
        some_id = int(store.ids()[0])
        redis.stop()
        status, data = _request(srv, "POST", "/query/ids", json.dumps({"ids": [some_id], "k": 1}))
        assert status == 503 and "redis" in data["error"].lower(), data
        status, data = _request(srv, "POST", "/query?k=1", real_images[0].read_bytes())
        assert status == 503 and "redis" in data["error"].lower(), data
        status, data = _request(srv, "GET", "/health")
        assert status == 503 and data["status"] == "unavailable"
        assert data["stores"]["redis"]["ok"] is False and data["stores"]["redis"]["reason"]
        # the client of `mae-search query --server` maps the 503 to a runtime failure: exit 1
        url = f"http://127.0.0.1:{srv.server_port}"
        res = CliRunner().invoke(search_main, ["query", str(real_images[0]), "--server", url])
        assert res.exit_code == 1, res.output
        assert "503" in res.output
    finally:
        close()
        store.close()


def test_listen_backlog_and_bounded_pool(server):
    adj = server._server.adj
    assert adj.backlog >= 1024 and adj.threads == server.service.limits.threads == 8
    assert adj.max_request_body_size == 8 * 1024 * 1024


def test_the_retriever_never_imports_eval():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "retriever"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(n == "eval" or n.startswith("eval.") for n in names), path
