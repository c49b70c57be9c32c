"""``mae-index export``: an index as a table for other tools (pandas, scanpy, pycytominer, a spreadsheet).

One row per image: ``id``, every record field (:data:`~indexer.core.records.RECORD_FIELDS`), one column
per tag key (a ``--metadata`` table's extra columns; a key that is also a field's name becomes
``tag_<key>``) and the vector. In parquet and CSV the vector is the float32 columns ``f0`` .. ``f{d-1}``;
in AnnData (``.h5ad``) it is ``X`` (images x d) and the metadata is ``obs`` (indexed by the id as text,
as AnnData wants), ``var`` naming ``f0`` .. ``f{d-1}``.

``aggregate="well"`` gives well-level profiles instead: one row per (plate, well, channel), the median of
its images' vectors feature by feature (what pycytominer's ``aggregate`` does by default), with
``count``, the number of images, and the tags every image of the group shares. Images without a well are
left out and counted.

Reading goes through the :class:`~indexer.stores.base.VectorStore` protocol a chunk at a time; writing is
atomic (a temporary file beside the target, then a rename). CSV text cells that a spreadsheet would run
as formulas are escaped and values holding a line break are quoted (:mod:`indexer.core.csv_safe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.core.atomic import atomic_write
from indexer.core.csv_safe import escape_frame, frame_to_csv
from indexer.core.errors import ConfigError
from indexer.core.records import RECORD_FIELDS
from indexer.stores.base import VectorStore

#: Output formats, by the name ``--format`` takes.
FORMATS = ("parquet", "anndata", "csv")
#: Levels ``--aggregate`` takes.
AGGREGATES = ("well",)
#: Records and vectors read from the store per request.
CHUNK = 10_000
#: Fields whose values are whole numbers (nullable in the table: an image may not say).
INT_FIELDS = ("column", "site", "z")
#: The keys of a well-level profile.
WELL_KEYS = ("plate", "well", "channel")


@dataclass(frozen=True)
class Profiles:
    """Rows of metadata (a pandas DataFrame, one row per image or per group) and their vectors (rows x d)."""

    meta: object  # pandas.DataFrame (pandas is imported where it is used)
    vectors: np.ndarray
    left_out: int = 0  # images not in any row (aggregate: images without a well)

    def feature_names(self) -> list[str]:
        """The vector's column names: ``f0`` .. ``f{d-1}``."""
        return [f"f{i}" for i in range(self.vectors.shape[1])]


def _tag_column(key: str) -> str:
    return f"tag_{key}" if key in ("id", *RECORD_FIELDS, "count") else key


def read_profiles(store: VectorStore, chunk: int = CHUNK) -> Profiles:
    """Every image of ``store`` in id order: its record's fields, its tags as columns, its vector.

    Raises
    ------
    ConfigError
        When the store holds no image.
    """
    import pandas as pd

    ids = np.sort(np.asarray(store.ids(), dtype=np.int64))
    if not len(ids):
        raise ConfigError("the index holds no image: nothing to export")
    rows, vectors = [], []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        for rec in store.get(part):
            row = {"id": rec.id, **{f: getattr(rec, f) for f in RECORD_FIELDS}}
            row.update({_tag_column(k): v for k, v in rec.tags})
            rows.append(row)
        vectors.append(np.asarray(store.get_vectors(part), dtype=np.float32))
    meta = pd.DataFrame(rows)
    fields = ["id", *RECORD_FIELDS]
    tags = sorted(c for c in meta.columns if c not in fields)
    meta = meta[fields + tags]
    for f in INT_FIELDS:
        meta[f] = meta[f].astype("Int64")
    return Profiles(meta, np.concatenate(vectors))


def aggregate_wells(profiles: Profiles) -> Profiles:
    """Well-level profiles: per (plate, well, channel), the feature-wise median of its images' vectors,
    ``count`` images, and the tags whose value every image of the group shares (else empty).

    Raises
    ------
    ConfigError
        When no image has a well (nothing to aggregate).
    """
    import pandas as pd

    meta = profiles.meta
    has_well = meta["well"].notna().to_numpy()
    if not has_well.any():
        raise ConfigError(
            "no indexed image has a well (BBBC006 names or a --metadata table's well column give one): "
            "nothing to aggregate; export without --aggregate"
        )
    meta = meta[has_well].reset_index(drop=True)
    vectors = profiles.vectors[has_well]
    tags = [c for c in meta.columns if c not in ("id", *RECORD_FIELDS)]
    keys = meta[list(WELL_KEYS)].astype(object).where(meta[list(WELL_KEYS)].notna(), None)
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys.itertuples(index=False, name=None)):
        groups.setdefault(key, []).append(i)
    order = sorted(groups, key=lambda k: tuple((v is None, str(v)) for v in k))
    rows, medians = [], []
    for key in order:
        members = groups[key]
        row = dict(zip(WELL_KEYS, key), count=len(members))
        for tag in tags:
            values = meta[tag].iloc[members].dropna().unique()
            row[tag] = values[0] if len(values) == 1 and meta[tag].iloc[members].notna().all() else None
        rows.append(row)
        medians.append(np.median(vectors[members], axis=0))
    out = pd.DataFrame(rows, columns=[*WELL_KEYS, "count", *tags])
    left_out = profiles.left_out + int((~has_well).sum())
    return Profiles(out, np.asarray(medians, dtype=np.float32), left_out)


def _frame(profiles: Profiles, escape: bool):
    """Metadata and ``f0..`` columns in one DataFrame (text cells escaped for spreadsheets if ``escape``)."""
    import pandas as pd

    meta = escape_frame(profiles.meta) if escape else profiles.meta.copy()
    features = pd.DataFrame(profiles.vectors, columns=profiles.feature_names(), index=meta.index)
    return pd.concat([meta, features], axis=1)


def _anndata(profiles: Profiles):
    """An AnnData of ``profiles`` (``mae-index export`` checks the [export] extra before it reads)."""
    import anndata
    import pandas as pd

    obs = profiles.meta.copy()
    key = "id" if "id" in obs.columns else None
    obs.index = (obs[key].astype(str) if key else pd.RangeIndex(len(obs)).astype(str)).to_numpy()
    for c in obs.columns:
        if obs[c].dtype == object:  # text with gaps: a categorical keeps None as missing in .h5ad
            obs[c] = obs[c].astype("category")
    var = pd.DataFrame(index=profiles.feature_names())
    return anndata.AnnData(X=profiles.vectors, obs=obs, var=var)


def write_profiles(profiles: Profiles, fmt: str, out: Path) -> None:
    """Write ``profiles`` to ``out`` as ``fmt`` (one of :data:`FORMATS`), atomically.

    Raises
    ------
    ConfigError
        An unknown format.
    ImportError
        ``anndata`` without the [export] extra (the CLI says so first: ``require_extra("export")``).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "anndata":
        adata = _anndata(profiles)  # the extra is checked before anything is written
        atomic_write(out, lambda p: adata.write_h5ad(p))
    elif fmt == "parquet":
        frame = _frame(profiles, escape=False)
        atomic_write(out, lambda p: frame.to_parquet(p, index=False))
    else:
        frame = _frame(profiles, escape=True)
        atomic_write(out, lambda p: frame_to_csv(frame, p))
