"""The pure maths of --normalize (indexer.vectors.normalize) against numpy/sklearn references, and the build's
small pure rules around it (the --fit-on syntax, the manifest handshake)."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler, normalize

from indexer.core.config import NormalizeSpec, fit_on_text, parse_fit_on
from indexer.core.errors import ConfigError, IndexMismatchError
from indexer.core.records import ImageRecord, MetadataFilter
from indexer.ingest.plan import settle_normalize
from indexer.vectors.normalize import fit_transform
from indexer.vectors.transform_file import decode_transform, encode_transform


def _correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)  # strongly unequal axes
    return rng.normal(size=(n, d)) @ mixing.T + rng.normal(size=d) * 5


def _cosines(x: np.ndarray) -> np.ndarray:
    u = normalize(x)
    return u @ u.T


def test_center_subtracts_the_fit_mean_like_sklearn():
    x = _correlated(300, 12)
    t = fit_transform(x, "center")
    np.testing.assert_allclose((x - t.mean).mean(axis=0), 0.0, atol=1e-10)
    ref = normalize(StandardScaler(with_std=False).fit_transform(x))
    np.testing.assert_allclose(t.apply(x), ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(t.apply(x), axis=1), 1.0, atol=1e-6)
    assert t.apply(x).dtype == np.float32 and t.matrix is None and t.n_fit == 300


def test_whitened_covariance_is_identity_on_the_fit_set():
    x = _correlated(2000, 16)
    t = fit_transform(x, "whiten", eps=0.0)
    white = (x - t.mean) @ t.matrix
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(16), atol=1e-5)
    assert np.linalg.cond(np.cov(x, rowvar=False)) > 100  # the input was far from white


def test_whiten_matches_sklearn_pca_whitening_up_to_rotation():
    # Cosine does not see the sign of a principal axis (nor PCA vs ZCA): compare cosine matrices.
    x = _correlated(500, 10, seed=1)
    ours = fit_transform(x, "whiten", eps=0.0).apply(x)
    ref = PCA(whiten=True).fit_transform(x)
    np.testing.assert_allclose(ours @ ours.T, _cosines(ref), atol=1e-5)


def test_ridge_bounds_directions_the_fit_set_does_not_span():
    x = _correlated(8, 20)  # 8 vectors span 7 of 20 directions
    with pytest.raises(ConfigError, match="absolute ridge must be > 0"):
        fit_transform(x, "whiten", eps=0.0, ridge="absolute")
    exact = fit_transform(x, "whiten", eps=0.0)  # relative: the unspanned axes are projected out
    white_cov = np.cov((x - exact.mean) @ exact.matrix, rowvar=False)
    eig = np.linalg.eigvalsh(white_cov)
    assert eig.max() <= 1.0 + 1e-9 and np.sum(eig > 0.99) == 7  # spanned axes white, the rest at 0
    assert np.sum(np.linalg.norm(exact.matrix, axis=0) > 0) == 7
    # A huge ridge scales every axis alike: whitening turns into centering.
    huge = fit_transform(x, "whiten", eps=1e9)
    center = fit_transform(x, "center")
    np.testing.assert_allclose(
        huge.apply(x) @ huge.apply(x).T, center.apply(x) @ center.apply(x).T, atol=1e-5
    )


def test_none_fits_nothing_and_bad_input_is_refused():
    assert fit_transform(np.ones((4, 3)), "none") is None
    with pytest.raises(ConfigError, match="unknown normalisation"):
        fit_transform(np.ones((4, 3)), "sphere")
    with pytest.raises(ConfigError, match="at least 2"):
        fit_transform(np.ones((1, 3)), "center")
    with pytest.raises(ConfigError, match="3-d"):
        fit_transform(_correlated(5, 3), "center").apply(np.ones((2, 4)))


def test_file_round_trip_keeps_the_fingerprint_and_a_change_shows():
    t = fit_transform(_correlated(50, 6), "whiten", eps=1e-4)
    back = decode_transform(encode_transform(t))
    assert back.fingerprint() == t.fingerprint() and back.kind == "whiten" and back.eps == 1e-4
    np.testing.assert_array_equal(back.apply(_correlated(3, 6, 2)), t.apply(_correlated(3, 6, 2)))
    changed = fit_transform(_correlated(50, 6), "whiten", eps=1e-3)
    assert changed.fingerprint() != t.fingerprint()


def test_fit_on_syntax():
    where = parse_fit_on(["well=a01,A02", "site=1"])
    assert where == MetadataFilter(well=("A01", "A02"), site=(1,))
    assert where.matches(ImageRecord(1, "p", well="A02", site=1))
    assert not where.matches(ImageRecord(2, "p", well="A02", site=2))
    assert parse_fit_on(["tag=treatment=dmso"]) == MetadataFilter(tags=("treatment=dmso",))
    assert parse_fit_on([]) is None
    for bad in ("well", "colour=red", "site=x"):
        with pytest.raises(ConfigError, match="--fit-on"):
            parse_fit_on([bad])


def test_manifest_handshake_names_the_field():
    assert settle_normalize(NormalizeSpec(), None) == {"kind": "none"}
    new = settle_normalize(NormalizeSpec(kind="whiten", fit_on=parse_fit_on(["well=A01"])), None)
    assert new == {"kind": "whiten", "eps": 1.0, "ridge": "relative", "fit_on": "well=A01"}
    stored = {"normalize": {**new, "n_fit": 4, "sha256": "ab"}}
    assert settle_normalize(NormalizeSpec(), stored)["sha256"] == "ab"  # flags omitted: the index's own
    with pytest.raises(IndexMismatchError, match="normalize.kind: the index has 'whiten'"):
        settle_normalize(NormalizeSpec(kind="center"), stored)
    with pytest.raises(IndexMismatchError, match="normalize.eps"):
        settle_normalize(NormalizeSpec(kind="whiten", eps=1e-3), stored)
    with pytest.raises(IndexMismatchError, match="normalize.kind: the index has 'none'"):
        settle_normalize(NormalizeSpec(kind="whiten"), {"dim": 4})  # an index built before --normalize


def test_a_normalize_spec_round_trips_through_its_manifest_record():
    # b690aef: --fit-on was joined into one string and split back on spaces, so a tag value with a space
    # ("treatment=DMSO 0.1%") came back as two items and the build failed at its fit, after embedding.
    where = parse_fit_on(["site=1", "well=a02,A01", "tag=treatment=DMSO 0.1%"])
    spec = NormalizeSpec(kind="center", fit_on=where)
    record = spec.to_record()
    assert record == {
        "kind": "center",
        "eps": None,
        "fit_on": "well=A01,A02 site=1 'tag=treatment=DMSO 0.1%'",
    }
    assert NormalizeSpec.from_record(record) == spec
    assert NormalizeSpec.from_record({**record, "n_fit": 8, "sha256": "ab"}) == spec  # a fitted record
    # Records written before: the same text, the same filter; a re-run with the fields in another order
    # asks for the same subset.
    assert NormalizeSpec.from_record(
        {"kind": "center", "fit_on": "site=1 well=A02,A01"}
    ).fit_on == parse_fit_on(["well=A02,A01", "site=1"])
    assert fit_on_text(parse_fit_on(["site=2"])) == "site=2" and fit_on_text(None) is None
    assert NormalizeSpec().to_record() == {"kind": "none"}
    assert NormalizeSpec(kind="whiten", eps=1e-3).to_record() == {
        "kind": "whiten",
        "eps": 1e-3,
        "ridge": "relative",  # a new whitening's ridge is a fraction of the spectrum (issue 30)
        "fit_on": None,
    }
    with pytest.raises(ConfigError, match="--normalize-eps"):
        NormalizeSpec(kind="whiten", eps=-1.0)


def test_describe_normalize_names_kind_ridge_subset_and_fingerprint():
    from indexer.vectors.transform_file import describe_normalize

    assert describe_normalize({"kind": "none"}) == "none"
    centred = {"kind": "center", "eps": None, "fit_on": "well=A01", "n_fit": 8, "sha256": "ab" * 32}
    assert (
        describe_normalize(centred)
        == "center (fitted on the well=A01 subset, 8 vectors, sha256 abababababab)"
    )
    assert describe_normalize({"kind": "whiten", "eps": 0.01, "fit_on": None}) == (
        "whiten (eps 0.01, not fitted yet: the first build stopped before its fit)"
    )


# --- the ridge is relative to the spectrum (issue 30) ------------------------------------------------------


def _embedding_like(n_per: int, d: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # Unit vectors as a model gives them: one shared direction, three phenotypes a little apart, and
    # per-image variation that falls off over a few dozen axes. Covariance eigenvalues ~1e-3 .. 1e-7.
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=d)
    offsets = rng.normal(size=(3, d)) * 0.15
    decay = np.exp(-np.arange(d) / 8.0)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    labels = np.repeat(np.arange(3), n_per)
    x = shared + offsets[labels] + (rng.normal(size=(3 * n_per, d)) * decay) @ basis.T * 0.3
    return normalize(x), labels


def _nearest_same_label(v: np.ndarray, labels: np.ndarray) -> float:
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    return float((labels[sims.argmax(1)] == labels).mean())


def test_whitening_fewer_vectors_than_dimensions_keeps_neighbours():
    # 30 vectors in 192-d: before, the absolute ridge 1e-6 sat below most of the spanned eigenvalues, so
    # whitening made the 30 fitted images nearly equidistant (nearest neighbour ~ chance, 1/3).
    x, labels = _embedding_like(10)
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert np.sum(eig > 1e-6) >= 20  # the spectrum the old absolute ridge whitened exactly
    assert _nearest_same_label(x, labels) == 1.0
    t = fit_transform(x, "whiten")
    y = t.apply(x)
    assert _nearest_same_label(y, labels) >= 0.9
    off = (y @ y.T)[~np.eye(len(y), dtype=bool)]
    assert off.std() > 0.1  # not a simplex of equidistant points (which has std 0)


def test_a_query_is_projected_onto_the_fitted_directions():
    x, _ = _embedding_like(10)
    t = fit_transform(x, "whiten")
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=True)
    outside = vt[-1]  # a direction no fitted vector has any of
    query = x[:1] + 0.05 * outside  # an outside image: a little of an unfitted direction
    # Its unfitted part is dropped: it comes out as the fitted image itself (before: x ~1,000 and swamped).
    np.testing.assert_allclose(t.apply(query), t.apply(x[:1]), atol=1e-5)


def test_fit_on_no_more_vectors_than_dimensions_warns_with_a_hint(caplog):
    x, _ = _embedding_like(10)
    with caplog.at_level("WARNING", logger="indexer.vectors.normalize"):
        fit_transform(x, "whiten")
    assert "fitted on 30 vectors of 192 dimensions" in caplog.text and "--normalize center" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="indexer.vectors.normalize"):
        fit_transform(_correlated(100, 12), "whiten")
    assert caplog.text == ""


def test_transform_files_fitted_with_the_absolute_ridge_still_load_and_match():
    import io

    x = _correlated(50, 6)
    old = fit_transform(x, "whiten", eps=1e-6, ridge="absolute")
    # The file format of indexes made before: no ridge field.
    buf = io.BytesIO()
    np.savez(buf, kind=np.str_("whiten"), mean=old.mean, eps=np.float64(1e-6), n_fit=np.int64(50),
             matrix=old.matrix)  # fmt: skip
    back = decode_transform(buf.getvalue())
    assert back.ridge == "absolute" and back.fingerprint() == old.fingerprint()
    # ... and its fingerprint is the one those manifests recorded (kind|eps|n_fit, mean, matrix).
    import hashlib

    h = hashlib.sha256(b"whiten|1e-06|50")
    h.update(old.mean.tobytes())
    h.update(old.matrix.tobytes())
    assert back.fingerprint() == h.hexdigest()
    new = decode_transform(encode_transform(fit_transform(x, "whiten")))
    assert new.ridge == "relative"
