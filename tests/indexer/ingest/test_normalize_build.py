"""--normalize end to end: the real tiny model, real TIFFs, the FAISS folder and the real Redis fixture."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.core.errors import IndexMismatchError
from indexer.stores.faiss.store import FaissStore
from indexer.stores.redis.store import RedisStore
from indexer.vectors.transform_file import decode_transform
from retriever.search import QueryOptions, Retriever


def _build(paths, idx, model, redis_config, *extra):
    cmd = ["build", *map(str, paths), "--index", str(idx), "--model", str(model), "--device", "cpu",
           "--redis-url", redis_config.url, "--redis-index", redis_config.index_name,
           "--format", "json", "--no-progress", *extra]  # fmt: skip
    return CliRunner().invoke(index_main, cmd)


@pytest.fixture
def whitened(tmp_path, tiny_model_dir, real_images, redis_config):
    idx = tmp_path / "idx"
    r = _build(real_images[:14], idx, tiny_model_dir, redis_config, "--normalize", "whiten")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["indexed"] == 14
    return idx


def test_manifest_records_the_transform_in_both_stores(whitened, redis_config):
    manifest = json.loads((whitened / "manifest.json").read_text())
    record = manifest["normalize"]
    data = (whitened / "normalize.npz").read_bytes()
    transform = decode_transform(data)
    assert record == {
        "kind": "whiten",
        "eps": 1.0,
        "ridge": "relative",
        "fit_on": None,
        "n_fit": 14,
        "sha256": transform.fingerprint(),
    }
    with RedisStore(redis_config) as redis:
        assert redis.read_manifest()["normalize"] == record
        assert redis.read_transform() == data


def test_both_stores_hold_the_transformed_vectors_and_agree(whitened, redis_config, real_images):
    faiss = FaissStore(whitened, read_only=True)
    redis = RedisStore(redis_config)
    by_faiss, by_redis = (
        Retriever.open(faiss, device="cpu"),
        Retriever.open(redis, device="cpu", index_dir=whitened),
    )
    assert by_faiss.transform.fingerprint() == by_redis.transform.fingerprint()
    queries = real_images[:14]
    hits_f = by_faiss.search_files(queries, QueryOptions(k=5))
    hits_r = by_redis.search_files(queries, QueryOptions(k=5))
    for path, row_f, row_r in zip(queries, hits_f, hits_r):
        assert row_f[0].record.path == str(path) and row_f[0].score >= 0.999  # a query finds itself first
        assert [h.id for h in row_f] == [h.id for h in row_r]
        np.testing.assert_allclose([h.score for h in row_f], [h.score for h in row_r], atol=1e-4)
    # Stored = transform(raw model vector), in both stores; the raw vectors are not what is stored.
    raw = Retriever(faiss, by_faiss.encoder, by_faiss.preprocess).embed_files(queries)
    ids = [row[0].id for row in hits_f]
    expected = by_faiss.transform.apply(raw)
    np.testing.assert_allclose(faiss.get_vectors(ids), expected, atol=1e-5)
    np.testing.assert_allclose(redis.get_vectors(ids), expected, atol=1e-3)  # Redis may store float16/32
    assert np.abs(faiss.get_vectors(ids) - raw).max() > 0.1
    # Whitening spreads the nearly parallel raw vectors out.
    off = ~np.eye(len(ids), dtype=bool)
    assert np.median((expected @ expected.T)[off]) < np.median((raw @ raw.T)[off]) - 0.3
    redis.close()


def test_resumed_build_reuses_the_transform_and_other_flags_are_refused(
    whitened, tiny_model_dir, real_images, redis_config
):
    before = (whitened / "normalize.npz").read_bytes()
    r = _build(real_images, whitened, tiny_model_dir, redis_config)  # no --normalize: the index's own
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["indexed"] == 6 and json.loads(r.stdout)["index_count"] == 20
    assert (whitened / "normalize.npz").read_bytes() == before
    assert json.loads((whitened / "manifest.json").read_text())["normalize"]["n_fit"] == 14
    retriever = Retriever.open(FaissStore(whitened, read_only=True), device="cpu")
    for path, row in zip(real_images[14:], retriever.search_files(real_images[14:], QueryOptions(k=2))):
        assert row[0].record.path == str(path) and row[0].score >= 0.999
    r = _build(real_images, whitened, tiny_model_dir, redis_config, "--normalize", "center")
    assert (
        r.exit_code == 1 and "normalize.kind: the index has 'whiten', this run asks for 'center'" in r.output
    )


def test_a_changed_transform_is_refused(whitened):
    data = bytearray((whitened / "normalize.npz").read_bytes())
    t = decode_transform(bytes(data))
    from indexer.vectors.normalize import EmbeddingTransform
    from indexer.vectors.transform_file import encode_transform

    other = EmbeddingTransform(t.kind, t.mean + 1e-3, t.matrix, t.eps, t.n_fit)
    (whitened / "normalize.npz").write_bytes(encode_transform(other))
    with pytest.raises(IndexMismatchError, match="changed since the build"):
        Retriever.open(FaissStore(whitened, read_only=True), device="cpu", lazy=True)
    (whitened / "normalize.npz").unlink()
    with pytest.raises(IndexMismatchError, match="transform .* is missing"):
        Retriever.open(FaissStore(whitened, read_only=True), device="cpu", lazy=True)


def test_a_planted_transform_is_refused_before_it_is_unpacked(whitened):
    """The folder is untrusted and the checksum is of the unpacked arrays. Before (c59f047): a 300 KB
    normalize.npz of deflated zeros claiming a 1 GiB matrix was unpacked, and only then did the checksum
    say "changed since the build"; one linked to /dev/zero was silently "missing". Now: refused from the zip directory and the file type."""
    import os
    import tracemalloc
    import zipfile

    from indexer.core.errors import IndexDamagedError

    path = whitened / "normalize.npz"
    path.unlink()
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1)))
    header["shape"] = (2**14, 2**13)  # 1 GiB of float64
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in (("kind", np.str_("whiten")), ("mean", np.zeros(8)), ("eps", np.array(1e-6)),
                            ("n_fit", np.array(14))):  # fmt: skip
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, value)
        with zf.open("matrix.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for _ in range(2**30 // 2**22):
                f.write(bytes(2**22))
    assert path.stat().st_size < 3_000_000
    tracemalloc.start()
    try:
        with pytest.raises(IndexMismatchError, match=r"unreadable: its arrays unpack to 10737\d+ bytes"):
            Retriever.open(FaissStore(whitened, read_only=True), device="cpu", lazy=True)
        assert tracemalloc.get_traced_memory()[1] < 64 * 2**20
    finally:
        tracemalloc.stop()
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(IndexDamagedError, match="a device, not a regular file"):
        Retriever.open(FaissStore(whitened, read_only=True), device="cpu", lazy=True)
    assert os.path.islink(path)


def test_fit_on_a_subset_and_center(tmp_path, tiny_model_dir, real_images, redis_config):
    idx = tmp_path / "c"
    r = _build(real_images, idx, tiny_model_dir, redis_config, "--normalize", "center", "--fit-on", "site=1")
    assert r.exit_code == 0, r.output
    record = json.loads((idx / "manifest.json").read_text())["normalize"]
    site1 = sum(1 for p in real_images if "_s1_" in p.name)
    assert record["kind"] == "center" and record["fit_on"] == "site=1" and record["n_fit"] == site1 < 20
    store = FaissStore(idx, read_only=True)
    retriever = Retriever.open(store, device="cpu")
    raw = Retriever(store, retriever.encoder, retriever.preprocess).embed_files(real_images)
    site1_mean = raw[["_s1_" in p.name for p in real_images]].mean(axis=0)
    np.testing.assert_allclose(retriever.transform.mean, site1_mean, atol=1e-6)
    # A subset that matches too few images fails before any vector is written; a re-run may fix it.
    bad = tmp_path / "bad"
    args = ["build", *map(str, real_images), "--index", str(bad), "--model", str(tiny_model_dir), "--device", "cpu",
            "--no-progress", "--normalize", "center"]  # fmt: skip
    r = CliRunner().invoke(index_main, [*args, "--fit-on", "well=Z99"])
    assert r.exit_code == 2 and "--fit-on well=Z99 matches 0 of the 20 images" in r.output
    assert FaissStore(bad, read_only=True).count() == 0
    r = CliRunner().invoke(index_main, [*args, "--fit-on", "site=2"])
    assert r.exit_code == 0, r.output
    assert json.loads((bad / "manifest.json").read_text())["normalize"]["fit_on"] == "site=2"


def test_server_and_explorer_path_apply_the_transform(whitened, redis_config, real_images):
    from retriever.http.service import QueryService

    retriever = Retriever.open(FaissStore(whitened, read_only=True), device="cpu")
    service = QueryService(retriever)
    service.add_backend(RedisStore(redis_config))
    blobs = [p.read_bytes() for p in real_images[:3]]
    np.testing.assert_allclose(service.embed_blobs(blobs), retriever.embed_files(real_images[:3]), atol=1e-6)
    for backend in ("faiss", "redis"):
        hits = service.pick(backend).search_vectors(service.embed_blobs(blobs), QueryOptions(k=1))
        assert [row[0].record.path for row in hits] == [str(p) for p in real_images[:3]]


def test_info_prints_the_normalisation_in_text_and_json(whitened, tmp_path, tiny_model_dir, real_images):
    fingerprint = json.loads((whitened / "manifest.json").read_text())["normalize"]["sha256"]
    text = CliRunner().invoke(index_main, ["info", "--index", str(whitened)])
    assert text.exit_code == 0, text.output
    line = next(x for x in text.output.splitlines() if x.startswith("normalize:"))
    assert (
        line
        == f"normalize:  whiten (eps 1 x mean eigenvalue, fitted on all 14 vectors, sha256 {fingerprint[:12]})"
    )
    d = json.loads(
        CliRunner().invoke(index_main, ["info", "--index", str(whitened), "--format", "json"]).stdout
    )
    assert d["normalize"] == {
        "kind": "whiten",
        "eps": 1.0,
        "ridge": "relative",
        "fit_on": None,
        "n_fit": 14,
        "sha256": fingerprint,
    }
    plain = tmp_path / "plain"
    r = CliRunner().invoke(index_main, ["build", str(real_images[0]), "--index", str(plain), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "normalize:  none" in CliRunner().invoke(index_main, ["info", "--index", str(plain)]).output
    d = json.loads(CliRunner().invoke(index_main, ["info", "--index", str(plain), "--format", "json"]).stdout)
    assert d["normalize"] == {"kind": "none"}
