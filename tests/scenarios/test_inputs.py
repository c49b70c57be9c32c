"""Items 2 and 12 of issue 16: file names that are not UTF-8, symlinked folders, near-miss BBBC006
names, --channels on unparsed names, and the same path given twice."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.core.config import SourceConfig
from indexer.core.records import MetadataFilter
from indexer.images.decode import content_id
from indexer.images.sources import display_path, iter_sources, read_path
from indexer.stores.faiss.store import FaissStore

needs_redis = pytest.mark.redis
Z16 = "BBBC006_v1_images_z_16"


def _build(data, index, model, *extra):
    args = ["build", *map(str, data), "--index", str(index), "--model", str(model), "--device", "cpu",
            "--no-progress", "--format", "json", *extra]  # fmt: skip
    r = CliRunner().invoke(main, args)
    return r, (json.loads(r.stdout) if r.exit_code in (0, 1) and r.stdout.strip() else None)


# ------------------------------------------------------------------ item 2: names that are not UTF-8
@needs_redis
def test_a_file_name_that_is_not_utf8_is_indexed_in_both_stores(
    tmp_path, real_images, tiny_model_dir, redis_config
):
    folder = tmp_path / "data" / Z16
    folder.mkdir(parents=True)
    for p in real_images[:5]:
        shutil.copy(p, folder / p.name)
    raw_name = os.fsencode(folder) + b"/caf\xe9-\xff.tif"  # Latin-1 bytes: not valid UTF-8
    with open(raw_name, "wb") as f:
        f.write(real_images[5].read_bytes())
    with open(os.fsencode(folder) + b"/broken\xff.tif", "wb") as f:
        f.write(b"II*\x00 not a tiff")
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    r, summary = _build([tmp_path / "data"], tmp_path / "idx", tiny_model_dir, *base)
    assert r.exit_code == 0, r.output
    assert summary["indexed"] == 6 and summary["rejected"] == 1
    # The stored path is valid UTF-8, escaped as documented, and leads back to the file.
    escaped = f"{folder}/caf\\xe9-\\xff.tif"
    assert display_path(os.fsdecode(raw_name)) == escaped
    image_id = content_id(real_images[5].read_bytes())
    store = FaissStore(tmp_path / "idx", read_only=True)
    (record,) = store.get([image_id])
    assert record.path == escaped and read_path(record.path) == real_images[5].read_bytes()
    assert json.loads(json.dumps(record.to_dict()))["path"] == escaped
    # Redis holds the same, and a path filter finds it there and in FAISS.
    from indexer.stores.redis.store import RedisStore

    redis = RedisStore(redis_config)
    assert redis.get([image_id])[0] == record
    where = MetadataFilter(path=escaped)
    vec = store.get_vectors([image_id])
    assert [h.id for h in redis.search(vec, 3, where)[0]] == [image_id]
    assert [h.id for h in store.search(vec, 3, where)[0]] == [image_id]
    v = CliRunner().invoke(main, ["verify", "--index", str(tmp_path / "idx"), *base])
    assert v.exit_code == 0, v.output
    # rejected.csv is UTF-8 and names the broken file the same way.
    with open(tmp_path / "idx" / "rejected.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [f"{folder}/broken\\xff.tif"]
    # A re-run finds everything indexed (no failure on every re-run).
    r2, s2 = _build([tmp_path / "data"], tmp_path / "idx", tiny_model_dir, *base)
    assert r2.exit_code == 0 and s2["skipped_existing"] == 6 and s2["indexed"] == 0


# ------------------------------------------------------------------ item 12: inputs skipped or indexed silently
def test_symlinked_subfolder_is_followed_and_a_loop_ends(tmp_path, real_images):
    outside = tmp_path / "elsewhere" / Z16
    outside.mkdir(parents=True)
    for p in real_images[:4]:
        shutil.copy(p, outside / p.name)
    data = tmp_path / "data"
    data.mkdir()
    (data / "plate1").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (outside / "loop").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    problems = []
    items = list(iter_sources(SourceConfig(paths=(data,)), problems))
    assert len(items) == 4 and all(i.meta.z == 16 and i.meta.channel == "w2" for i in items)
    assert [(p.kind, "already listed" in p.reason) for p in problems] == [("duplicate", True)]
    assert problems[0].path == str(data / "plate1" / Z16 / "loop")


def test_near_miss_bbbc006_names_are_rejected_with_a_reason(tmp_path, real_images, tiny_model_dir):
    uuid = "248254b0-0193-4e11-8762-62b5d2b86216"
    names = {
        f"{Z16}/plate_q25_s1_w1{uuid}.tif": "well 'q25' is outside A01-P24",
        f"{Z16}/plate_a00_s1_w1{uuid}.tif": "well 'a00' is outside A01-P24",
        f"{Z16}/plate_a01_s9_w1{uuid}.tif": "site s9 is not one of s1, s2",
        f"{Z16}/plate_a01_s1_w3{uuid}.tif": "channel w3 is not one of w1, w2",
        f"BBBC006_v1_images_z_99/plate_a01_s1_w1{uuid}.tif": "z-slice 99 is outside 0-33",
    }
    for i, name in enumerate(names):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_images[i], tmp_path / "data" / name)
    shutil.copy(real_images[10], tmp_path / "data" / Z16 / real_images[10].name)
    r, summary = _build([tmp_path / "data"], tmp_path / "idx", tiny_model_dir)
    assert summary["indexed"] == 1 and summary["rejected"] == 5 and summary["complete"] is False
    with open(tmp_path / "idx" / "rejected.csv", encoding="utf-8", newline="") as f:
        rows = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    for name, reason in names.items():
        assert reason in rows[str(tmp_path / "data" / name)]


def test_channels_select_parsed_names_only(tmp_path, real_images):
    d = tmp_path / "data" / Z16
    d.mkdir(parents=True)
    w2 = real_images[0].name
    w1 = w2.replace("_w2", "_w1")
    shutil.copy(real_images[0], d / w2)
    shutil.copy(real_images[1], d / w1)
    shutil.copy(real_images[2], d / "plain.tif")
    problems = []
    items = list(iter_sources(SourceConfig(paths=(tmp_path / "data",), channels=("w1",)), problems))
    assert [i.path for i in items] == [str(d / w1)]
    assert [(p.path, p.kind) for p in problems] == [(str(d / "plain.tif"), "excluded")]
    # Without a selection the unparsed name is indexed (without metadata), as before.
    assert len(list(iter_sources(SourceConfig(paths=(tmp_path / "data",))))) == 3


def test_the_same_path_given_twice_is_reported_as_duplicates_not_a_failure(
    real_subset, tmp_path, tiny_model_dir
):
    folder = real_subset / Z16
    one = next(folder.glob("*.tif"))
    r, summary = _build([real_subset, real_subset, one], tmp_path / "idx", tiny_model_dir)
    assert r.exit_code == 0, r.output
    assert summary["indexed"] == 6 and summary["rejected"] == 0 and summary["complete"] is True
    # The second folder (one entry) and the file inside it.
    assert summary["duplicates_given"] == 2 and summary["found"] == 6
    assert np.array_equal(FaissStore(tmp_path / "idx", read_only=True).ids(),
                          sorted(content_id(p.read_bytes()) for p in folder.glob("*.tif")))  # fmt: skip
