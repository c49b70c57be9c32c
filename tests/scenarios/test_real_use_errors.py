"""Errors a real user meets are messages, not tracebacks, and optional extras are checked before any
work (issue 15, items 9, 10 and 12)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from eval.cli import main as eval_main
from indexer.cli import main as index_main
from retriever.cli import main as search_main
from tests.conftest import write_tiff

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model_dir, real_images):
    base = tmp_path_factory.mktemp("errs")
    data = base / "data"
    data.mkdir()
    for p in real_images[:6]:
        shutil.copy(p, data / p.name)
    r = CliRunner().invoke(index_main, ["build", str(data), "--index", str(base / "idx"), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return base


def _no_traceback(r):
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)


# ---------------------------------------------------------------- item 9
def test_eval_without_its_extra_stops_before_any_work(index, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the [eval] extra were not installed
    r = CliRunner().invoke(eval_main, ["robustness", "--index", str(index / "idx"), "--queries", "2",
                                       "--device", "cpu", "--out", str(tmp_path / "rep")])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 2 and "pip install 'mae-microscopy[eval]'" in r.output and "matplotlib" in r.output
    assert "robustness" not in r.stderr.replace("mae-eval robustness", "")  # no progress bar: no work done
    assert not (tmp_path / "rep").exists()


def test_ray_engine_without_its_extra_stops_before_loading_the_model(index, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    r = CliRunner().invoke(index_main, ["build", str(index / "data"), "--index", str(tmp_path / "i"),
                                        "--model", "no/such-model", "--engine", "ray"])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 2 and "pip install 'mae-microscopy[ray]'" in r.output
    assert not (tmp_path / "i").exists()


def test_docker_compose_app_service():
    app = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["app"]
    command = " ".join(app["command"])
    assert ".[eval]" in command  # the extras the commands need
    # torch installs once, into a named volume, not on every `docker compose run`.
    venv = [v for v in app["volumes"] if not v.startswith(".")]
    assert (
        venv and venv[0].split(":")[0] in yaml.safe_load((REPO / "docker-compose.yml").read_text())["volumes"]
    )
    assert command.index("||") < command.index("pip install")
    # ./runs once: inside the checkout, /app/runs.
    assert [v for v in app["volumes"] if "runs" in v] == []
    assert "download.pytorch.org/whl/cpu" in command  # the CPU build of torch, not the CUDA one


# ---------------------------------------------------------------- item 10
def test_eval_with_a_moved_image_says_which_and_goes_on(index, tmp_path):
    work = tmp_path / "data"
    shutil.copytree(index / "data", work)
    model = json.loads((index / "idx" / "manifest.json").read_text())["model"]["path"]
    r = CliRunner().invoke(index_main, ["build", str(work), "--index", str(tmp_path / "idx"), "--model", model,
                                        "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    moved = sorted(work.glob("*.tif"))[0]
    moved.unlink()
    args = ["robustness", "--index", str(tmp_path / "idx"), "--queries", "10", "--perturb", "gaussian_noise",
            "--severities", "0,1", "-k", "3", "--device", "cpu", "--out", str(tmp_path / "rep")]  # fmt: skip
    r = CliRunner().invoke(eval_main, args)
    _no_traceback(r)
    assert r.exit_code == 0, r.output
    assert "1 of 6 query images cannot be read" in r.stderr and moved.name in r.stderr
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(rep["query_ids"]) == 5 and rep["skipped_queries"][0]["path"] == str(moved)


def test_eval_with_every_image_moved_is_an_error(index, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(index, work)
    model = json.loads((work / "idx" / "manifest.json").read_text())["model"]["path"]
    r = CliRunner().invoke(index_main, ["build", str(work / "data"), "--index", str(tmp_path / "idx2"),
                                        "--model", model, "--device", "cpu", "--no-progress"])  # fmt: skip
    shutil.rmtree(work / "data")
    r = CliRunner().invoke(eval_main, ["robustness", "--index", str(tmp_path / "idx2"), "--queries", "3",
                                       "--device", "cpu", "--out", str(tmp_path / "rep")])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 1 and "none of the 3 query images can be read" in r.output and "moved" in r.output


def test_dataset_window_of_undecodable_images_is_a_message(tmp_path, tiny_model_dir):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.tif").write_bytes(b"II*\x00 not really")
    r = CliRunner().invoke(index_main, ["build", str(d), "--index", str(tmp_path / "idx"), "--model",
                                        str(tiny_model_dir), "--intensity", "dataset", "--device", "cpu",
                                        "--no-progress"])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 1 and "data-set intensity window" in r.output and "3 images" in r.output


def test_duplicate_content_in_one_ray_batch_is_written_once_not_a_traceback(tmp_path, redis_config):
    from dataclasses import asdict

    from indexer.ingest.ray_shards import import_shards
    from indexer.ingest.ray_stages import Write
    from indexer.stores.faiss.store import FaissStore
    from indexer.stores.redis.store import RedisStore

    vec = np.eye(4, dtype=np.float32)[:3]
    meta = {"plate": None, "well": None, "row": None, "column": None, "site": None, "channel": None, "z": None,
            "tags": "{}"}  # fmt: skip
    batch = {"order": np.arange(3), "part": np.zeros(3, int), "id": np.array([7, 7, 8]), "path": np.array(["a.tif", "copy_of_a.tif", "b.tif"]),
             "status": np.array(["ok", "ok", "ok"]), "stage": np.array(["", "", ""]),
             "reason": np.array(["", "", ""]), "meta": [meta] * 3, "vector": list(vec),
             "t_prepare": np.zeros(3), "t_embed": np.zeros(3), "precision": np.array(["fp32"] * 3)}  # fmt: skip
    Write(str(tmp_path / "shards"), asdict(redis_config))(batch)
    store = FaissStore(tmp_path / "idx", dim=4)
    assert import_shards(str(tmp_path / "shards"), store) == 2
    assert store.count() == 2 and RedisStore(redis_config).count() == 2


# ---------------------------------------------------------------- item 12
def test_a_bad_query_image_among_several_is_named_and_the_good_ones_answered(index, tmp_path, real_images):
    bad = tmp_path / "notes.tif"
    bad.write_bytes(b"lab notes")
    write_tiff(tmp_path / "signed.tif", np.zeros((64, 64), np.int16))
    args = ["query", str(real_images[0]), str(bad), str(real_images[1]), str(tmp_path / "signed.tif"),
            "--index", str(index / "idx"), "-k", "1", "--device", "cpu", "--format", "json"]  # fmt: skip
    r = CliRunner().invoke(search_main, args)
    _no_traceback(r)
    assert r.exit_code == 1
    rows = json.loads(r.stdout)
    assert [row["query"] for row in rows] == [str(real_images[0]), str(real_images[1])]
    assert (
        f"{bad}: not a readable TIFF" in r.stderr and "signed.tif: unsupported pixel type int16" in r.stderr
    )
    assert "2 of 4 query images could not be used" in r.stderr


def test_one_bad_query_image_names_the_file(index, tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_bytes(b"lab notes")
    r = CliRunner().invoke(search_main, ["query", str(bad), "--index", str(index / "idx"), "--device", "cpu"])
    _no_traceback(r)
    assert r.exit_code == 1 and str(bad) in r.output
