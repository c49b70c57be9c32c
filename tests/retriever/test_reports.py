"""The explorer serves only the files a report wrote: not a planted note, a symlink or a subfolder."""

from __future__ import annotations

import http.client
import json
import os

import pytest

from indexer.stores.faiss.store import FaissStore
from retriever import explorer, reports
from retriever.http.app import App
from retriever.http.service import QueryService
from retriever.search import Retriever
from tests.retriever.test_server_hardening import _start, index_dir  # noqa: F401


def _folder(path, uid, files=None):
    path.mkdir()
    obj = {"index": {"index_uid": uid}}
    if files is not None:
        obj["files"] = files
    (path / "report.json").write_text(json.dumps(obj))
    (path / "report.html").write_text("<h1>report</h1>")
    (path / "rows.csv").write_text("query,self_at_1\n1,1.0\n")
    (path / "summary.csv").write_text("perturbation\nblur\n")
    (path / "notes.txt").write_text("SECRET-TOKEN")  # beside the report, not written by it
    (path / "summary.json").write_text('{"secret": "SECRET-TOKEN"}')  # a served kind, yet not listed
    (path / "figs").mkdir()
    (path / "figs" / "a.png").write_bytes(b"\x89PNG")
    os.symlink("/etc/passwd", path / "passwd.csv")
    return path


def _get(srv, path):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_listed_files_are_the_reports_own(tmp_path):
    new = _folder(tmp_path / "new", "u", ["report.html", "report.json", "rows.csv", "../x.csv", "a/b.png",
                                          "passwd.csv", "notes.txt"])  # fmt: skip
    # Only plain names of a report's kinds: no path, no .txt even where listed.
    assert reports.listed_files(new) == {"report.html", "report.json", "rows.csv", "passwd.csv"}
    assert reports.read_report_file(new, "passwd.csv") is None  # listed, but a symlink
    assert reports.read_report_file(new, "summary.csv") is None  # this report did not list it
    old = _folder(tmp_path / "old", "u")  # written before report.json listed its files
    assert reports.listed_files(old) == set(reports.REPORT_FILES)
    assert reports.read_report_file(old, "rows.csv") == b"query,self_at_1\n1,1.0\n"


def test_a_report_folder_serves_only_its_report_files(index_dir, tmp_path):  # noqa: F811
    faiss = FaissStore(index_dir, read_only=True)
    uid = faiss.read_manifest()["index_uid"]
    beside = _folder(index_dir.parent / "robustness-run", uid)  # found beside the index, no file list
    given = _folder(tmp_path / "given", "another", list(reports.REPORT_FILES))  # given with --reports
    service = QueryService(Retriever.open(faiss, device="cpu"))
    app = App(service, service.limits)
    found = explorer.find_reports(index_dir, [given], uid)
    assert found == [given.resolve(), beside.resolve()]
    explorer.register(app, service, explorer.Catalog(faiss), found)
    srv, close = _start(service, app=app)
    try:
        for n in (0, 1):
            assert _get(srv, f"/reports/{n}/") == (200, b"<h1>report</h1>")
            for name in reports.REPORT_FILES:
                status, data = _get(srv, f"/reports/{n}/{name}")
                assert status == 200 and b"SECRET" not in data, name
            for name in ("notes.txt", "summary.json", "passwd.csv", "figs", "figs/a.png", "..", "%2e%2e"):
                status, data = _get(srv, f"/reports/{n}/{name}")
                assert status == 404 and b"SECRET" not in data and b"root:" not in data, (n, name)
    finally:
        close()


@pytest.mark.parametrize("files", [None, "report.html", [1, 2]])
def test_a_report_json_without_a_usable_list_falls_back_to_the_fixed_set(tmp_path, files):
    folder = _folder(tmp_path / "r", "u", files)
    assert reports.listed_files(folder) == set(reports.REPORT_FILES)
