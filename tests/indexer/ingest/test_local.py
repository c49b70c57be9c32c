import csv
import shutil
import zipfile

import numpy as np
import pytest

from indexer.core.config import BuildConfig, IntensityConfig, ModelConfig, PreprocessConfig, SourceConfig
from indexer.core.errors import ConfigError, DecodeError, IndexMismatchError
from indexer.core.limits import DecodeLimits
from indexer.core.records import MetadataFilter
from indexer.images.decode import content_id
from indexer.ingest.local import build_index
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from tests.conftest import write_tiff


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def _build(encoder, sources, index_dir, **kw):
    cfg = BuildConfig(
        sources=SourceConfig(paths=tuple(sources)),
        index_dir=index_dir,
        model=encoder.config,
        **kw,
    )
    store = FaissStore(index_dir, dim=encoder.dim)
    summary = build_index(cfg, [store], encoder=encoder)
    store.close()
    return summary, FaissStore(index_dir, read_only=True)


def test_build_indexes_every_image_with_metadata(encoder, real_subset, tmp_path):
    summary, store = _build(encoder, [real_subset], tmp_path / "idx", batch_size=4)
    assert (summary.found, summary.indexed, len(summary.rejected)) == (6, 6, 0)
    assert store.count() == 6
    for rec in store.get(store.ids()):
        assert rec.well and rec.site in (1, 2) and rec.channel == "w2" and rec.z == 16
        assert rec.id == content_id(open(rec.path, "rb").read())
    manifest = store.read_manifest()
    assert manifest["dim"] == encoder.dim and manifest["pooling"] == "mean"
    assert manifest["model"]["fingerprint"] == encoder.info["fingerprint"]
    assert manifest["preprocess"]["image_size"] == [64, 64]


def test_same_vectors_for_batch_sizes_workers_and_zip_input(encoder, real_subset, tmp_path):
    _, a = _build(encoder, [real_subset], tmp_path / "a", batch_size=1, workers=1)
    _, b = _build(encoder, [real_subset], tmp_path / "b", batch_size=7, workers=2)
    z = tmp_path / "BBBC006_v1_images_z_16.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted((real_subset / "BBBC006_v1_images_z_16").glob("*.tif")):
            zf.write(p, f"BBBC006_v1_images_z_16/{p.name}")
    _, c = _build(encoder, [z], tmp_path / "c", batch_size=32)
    ids = a.ids()
    assert np.array_equal(ids, b.ids()) and np.array_equal(ids, c.ids())
    va = a.get_vectors(ids)
    np.testing.assert_allclose(b.get_vectors(ids), va, atol=1e-6)
    np.testing.assert_allclose(c.get_vectors(ids), va, atol=1e-6)
    assert [r.well for r in c.get(ids)] == [r.well for r in a.get(ids)]


def test_rerun_skips_and_force_reembeds(encoder, real_subset, tmp_path):
    _build(encoder, [real_subset], tmp_path / "idx")
    again, store = _build(encoder, [real_subset], tmp_path / "idx")
    assert (again.indexed, again.skipped_existing, store.count()) == (0, 6, 6)
    forced, store = _build(encoder, [real_subset], tmp_path / "idx", force=True)
    assert (forced.indexed, store.count()) == (6, 6)


def test_renamed_copy_is_the_same_image(encoder, real_subset, tmp_path):
    _build(encoder, [real_subset], tmp_path / "idx")
    src = next((real_subset / "BBBC006_v1_images_z_16").glob("*.tif"))
    shutil.copy(src, real_subset / "renamed.tif")
    s, store = _build(encoder, [real_subset], tmp_path / "idx")
    assert (s.indexed, s.skipped_existing, store.count()) == (0, 7, 6)


def test_bad_files_are_rejected_listed_and_counted(encoder, real_subset, tmp_path):
    d = real_subset / "BBBC006_v1_images_z_16"
    (d / "broken.tif").write_bytes(b"II*\x00garbage")
    write_tiff(d / "signed.tif", np.zeros((64, 64), np.int32))
    dup = next(d.glob("mcf*.tif"))
    shutil.copy(dup, real_subset / "copy_of_first.tif")
    s, store = _build(encoder, [real_subset], tmp_path / "idx")
    assert s.indexed == 6 and store.count() == 6 and not s.complete
    with open(tmp_path / "idx" / "rejected.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"broken.tif", "signed.tif", "copy_of_first.tif"}
    assert by_name["signed.tif"]["stage"] == "decode" and "int32" in by_name["signed.tif"]["reason"]
    assert "same content as" in by_name["copy_of_first.tif"]["reason"]


def test_strict_stops_at_first_bad_file_keeping_what_was_written(encoder, real_subset, tmp_path):
    (real_subset / "BBBC006_v1_images_z_16" / "zzz_broken.tif").write_bytes(b"nope")
    with pytest.raises(DecodeError, match="strict"):
        _build(encoder, [real_subset], tmp_path / "idx", strict=True, batch_size=2)
    assert FaissStore(tmp_path / "idx", read_only=True).count() == 6


def test_other_preprocessing_is_refused(encoder, real_subset, tmp_path):
    _build(encoder, [real_subset], tmp_path / "idx")
    pre = PreprocessConfig(intensity=IntensityConfig(mode="fixed"))
    with pytest.raises(IndexMismatchError, match="preprocess"):
        _build(encoder, [real_subset], tmp_path / "idx", preprocess=pre)


def test_dataset_window_is_computed_once_and_reused(encoder, real_subset, tmp_path):
    pre = PreprocessConfig(intensity=IntensityConfig(mode="dataset"))
    _, store = _build(encoder, [real_subset], tmp_path / "idx", preprocess=pre)
    lo, hi = store.read_manifest()["preprocess"]["intensity"]["window"]
    assert 100 < lo < hi <= 4095
    # Adding images later reuses the stored window instead of computing a different one.
    write_tiff(real_subset / "BBBC006_v1_images_z_16" / "bright.tif", np.full((520, 696), 4000, np.uint16))
    s, store = _build(encoder, [real_subset], tmp_path / "idx", preprocess=pre)
    assert s.indexed == 1 and store.read_manifest()["preprocess"]["intensity"]["window"] == [lo, hi]


def test_bad_input_matrix_is_skipped_with_reasons(encoder, tmp_path, monkeypatch, real_images):
    import zipfile

    import tifffile

    from indexer.images import decode

    d = tmp_path / "data"
    d.mkdir()
    good = real_images[0].read_bytes()
    (d / "good.tif").write_bytes(good)
    (d / "truncated.tif").write_bytes(good[: len(good) // 2])
    (d / "notes.tif").write_bytes(b"lab notes, not an image")
    write_tiff(d / "eight_bit.tif", np.zeros((64, 64), np.uint8))
    write_tiff(d / "rgb.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    write_tiff(d / "signed.tif", np.zeros((64, 64), np.int16))
    write_tiff(d / "tiny.tif", np.zeros((8, 8), np.uint16))
    write_tiff(d / "zeros.tif", np.zeros((64, 64), np.uint16))
    write_tiff(d / "constant.tif", np.full((64, 64), 1000, np.uint16))
    write_tiff(d / "big.tif", np.ones((800, 800), np.uint16))
    with tifffile.TiffWriter(d / "pages.tif") as w:
        w.write(np.zeros((64, 64), np.uint16))
        w.write(np.zeros((64, 64), np.uint16))
    (d / "broken.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 10)
    (d / "dangling.tif").symlink_to(d / "missing.tif")
    with zipfile.ZipFile(d / "evil.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("../../etc/passwd.tif"), good)
    monkeypatch.setattr(
        decode, "DEFAULT_LIMITS", DecodeLimits(max_pixels=700 * 700)
    )  # "huge" without writing gigabytes
    s, store = _build(encoder, [d], tmp_path / "idx")
    kept = sorted(r.path.rsplit("/", 1)[-1] for r in store.get(store.ids()))
    # 8-bit images and multi-page stacks are indexed (each page one image); see test_formats.py.
    assert kept == ["constant.tif", "eight_bit.tif", "good.tif", "pages.tif#0", "pages.tif#1", "zeros.tif"]
    assert np.isfinite(store.get_vectors(store.ids())).all()
    with open(tmp_path / "idx" / "rejected.csv", newline="") as f:
        reasons = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in csv.DictReader(f)}
    assert set(reasons) == {"truncated.tif", "notes.tif", "rgb.tif", "signed.tif", "tiny.tif",
                            "big.tif", "broken.zip", "dangling.tif", "passwd.tif"}  # fmt: skip
    assert "too large" in reasons["big.tif"] and "'..'" in reasons["passwd.tif"]
    assert "broken link" in reasons["dangling.tif"] and "int16" in reasons["signed.tif"]
    assert all("\n" not in r for r in reasons.values())
    assert s.found == 14 and len(s.rejected) == 9 and s.indexed == 6


def test_provenance_is_recorded_in_both_stores(encoder, real_subset, tmp_path, redis_config):
    # Issue 14: a synthetic image says it is synthetic, and both stores keep source = real | synthetic.
    from indexer.bbbc006.synthetic import SyntheticConfig, generate
    from indexer.stores.redis.store import RedisStore

    generate(SyntheticConfig(out_dir=tmp_path / "synth", wells=("A01",), sites=(1,), channels=(2,),
                             z_slices=(16, 20), seed=0))  # fmt: skip
    cfg = BuildConfig(sources=SourceConfig(paths=(real_subset, tmp_path / "synth")), index_dir=tmp_path / "idx",
                      model=encoder.config)  # fmt: skip
    faiss, redis = FaissStore(tmp_path / "idx", dim=encoder.dim), RedisStore(redis_config)
    build_index(cfg, [faiss, redis], encoder=encoder)
    faiss.close()
    for store in (FaissStore(tmp_path / "idx", read_only=True), redis):
        recs = store.get(store.ids())
        by_source = {s: sorted(r.path.endswith(".tif") and "/synth/" in r.path for r in recs if r.source == s)
                     for s in ("real", "synthetic")}  # fmt: skip
        assert by_source == {"real": [False] * 6, "synthetic": [True] * 2}, type(store).__name__
        hit = store.search(store.get_vectors([recs[0].id]), 1)[0][0]
        assert hit.record.source == recs[0].source
        only = store.search(store.get_vectors([recs[0].id]), 10, MetadataFilter(source="synthetic"))[0]
        assert len(only) == 2 and {h.record.source for h in only} == {"synthetic"}
    with pytest.raises(ConfigError, match="real, synthetic"):
        MetadataFilter(source="fake")


def test_build_applies_the_decode_limits_to_bombs(encoder, real_subset, tmp_path):
    from tests.conftest import zero_bomb

    d = real_subset / "BBBC006_v1_images_z_16"
    (d / "bomb.tif").write_bytes(zero_bomb(16384))
    (d / "ratio.tif").write_bytes(zero_bomb(8192))
    summary, store = _build(encoder, [real_subset], tmp_path / "idx")
    assert (summary.indexed, len(summary.rejected)) == (6, 2)
    with open(tmp_path / "idx" / "rejected.csv", newline="") as f:
        reasons = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in csv.DictReader(f)}
    assert "the limit is 64 M pixels" in reasons["bomb.tif"]
    assert "compression ratio" in reasons["ratio.tif"]
