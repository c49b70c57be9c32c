"""Issue 19: the listing a build keeps for its whole run is a compact, columnar sequence, equal item for
item to what :func:`indexer.images.sources.iter_sources` yields; listing a file twice is still found."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from indexer.bbbc006.names import bbbc006_file_name, z_folder_name
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
from indexer.images.metadata_table import load_metadata_table
from indexer.images.sources import SourceItem, iter_sources
from indexer.ingest.plan import list_items

ROOT = Path(__file__).resolve().parents[3]
Z16 = z_folder_name(16)
ROWS = "abcdefghijklmnop"


def _config(*paths, **sources) -> BuildConfig:
    return BuildConfig(sources=SourceConfig(paths=tuple(paths), **sources), index_dir=Path("unused"),
                       model=ModelConfig(name="unused", device="cpu"))  # fmt: skip


def _plate_names(n_z: int):
    """(z folder, file name) of ``n_z`` full z-slices of BBBC006 (384 wells x 2 sites x 2 channels)."""
    n = 0
    for z in range(n_z):
        for r in range(16):
            for c in range(1, 25):
                for site in (1, 2):
                    for ch in (1, 2):
                        uuid = f"{n:08x}-0193-4e11-8762-{n * 7919 % 16**12:012x}"
                        yield z_folder_name(z), bbbc006_file_name(f"{ROWS[r]}{c:02d}", site, ch, uuid)
                        n += 1


_MEASURE = r"""
import gc, json, sys, tracemalloc
from pathlib import Path
from indexer.ingest.plan import list_items
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig

def config(path):
    return BuildConfig(sources=SourceConfig(paths=(Path(path),)), index_dir=Path("unused"),
                       model=ModelConfig(name="unused", device="cpu"))

list_items(config(sys.argv[2]))  # the modules and caches listing needs, not per image
gc.collect()
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
items, problems = list_items(config(sys.argv[1]))
gc.collect()
held, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
paths = sum(sys.getsizeof(it.path) for it in items)  # the path strings: needed, and held once
n = len(items)
print(json.dumps({"n": n, "problems": len(problems), "path": paths / n,
                  "held": (held - before - paths) / n, "peak": (peak - before - paths) / n}))
"""


@pytest.mark.parametrize("given", ["absolute", "relative"])
def test_a_listed_image_costs_a_few_bytes_besides_its_path(tmp_path, given):
    """Before: a list of slotted ``SourceItem``s, each with its ``FileReader`` and ``ImageMeta`` (202 B
    per image besides the path string, tracemalloc), and the lister's dict of real paths (a second full
    path string per file) on top while listing (peak 455-509 B, with the path's length). Now the paths
    in one list and the metadata as small-int codes (20 B held); the lister remembers a file listed
    under its real path by its display string, any other by a hash (peak 63 B absolute, 106 B
    relative). Bounds: 40 B held, 160 B at the peak."""
    data = tmp_path / "data"
    for folder, name in _plate_names(13):
        (data / folder).mkdir(parents=True, exist_ok=True)
        (data / folder / name).touch()  # listing reads names, not bytes
    warm = tmp_path / "warm" / Z16
    warm.mkdir(parents=True)
    (warm / bbbc006_file_name("a01", 1, 1, "248254b0-0193-4e11-8762-62b5d2b86216")).touch()
    # A relative path (not the real path of any file) is the case where the lister keeps a hash per file.
    root = str(data) if given == "absolute" else "data"
    out = subprocess.run([sys.executable, "-c", _MEASURE, root, str(warm.parent)], capture_output=True,
                         text=True, check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    got = json.loads(out.stdout)
    assert got["n"] == 13 * 1536 and got["problems"] == 0
    assert got["held"] < 40, f"{got['held']:.0f} B per listed image besides its path ({got})"
    assert got["peak"] < 160, f"{got['peak']:.0f} B per image at the listing's peak ({got})"


# ------------------------------------------------------------------ the same items as the generator
def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def mixed(tmp_path, real_images):
    """A folder of every kind the lister handles: BBBC006 names (two channels, two z-slices), plain names
    described by a metadata table with tags, a zip of members, a link to a folder outside, a link to a
    file, a name that is not UTF-8 (read from another path string than the one shown)."""
    data = tmp_path / "data"
    blobs = [p.read_bytes() for p in real_images]
    for i, p in enumerate(real_images[:4]):
        _write(data / Z16 / p.name, blobs[i])
        _write(data / z_folder_name(17) / p.name.replace("_w2", "_w1"), blobs[i + 4])
    plain = [_write(data / "plain" / f"img_{i}.tif", blobs[8 + i]) for i in range(3)]
    with zipfile.ZipFile(data / f"{z_folder_name(5)}.zip", "w") as zf:
        for i, p in enumerate(real_images[11:14]):
            zf.writestr(f"{z_folder_name(5)}/{p.name}", blobs[11 + i])
        zf.writestr("notes/readme.txt", b"not an image")
    outside = tmp_path / "elsewhere" / z_folder_name(9)
    _write(outside / real_images[14].name, blobs[14])
    (data / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (data / "plain" / "alias.tif").symlink_to(plain[0])  # the same file twice: listed once
    with open(os.fsencode(data / "plain") + b"/caf\xe9.tif", "wb") as f:
        f.write(blobs[15])
    table = tmp_path / "meta.csv"
    table.write_text(
        "path,well,site,channel,treatment,dose\n"
        f"{plain[0]},B03,1,w1,dmso,0\n{plain[1]},B04,2,w2,taxol,5\n{plain[2]},B04,2,w2,dmso,0\n"
    )
    return data, table


def _as_tuples(items):
    return [(it.path, it.meta, it.read()) for it in items]


@pytest.mark.parametrize("channels", [(), ("w1",), ("w2",)])
def test_the_listing_gives_the_items_the_generator_gives(mixed, channels):
    data, table = mixed
    config = _config(data, metadata=table, channels=channels)
    items, problems = list_items(config)
    want_problems = []
    want = list(iter_sources(config.sources, want_problems, load_metadata_table(table)))
    assert not isinstance(items, list) and isinstance(items[0], SourceItem)
    assert len(items) == len(want) > 0
    assert _as_tuples(items) == _as_tuples(want)
    assert [it.path for it in items] == [it.path for it in want]
    assert [items[i].path for i in range(len(items))] == [it.path for it in want]
    assert problems == want_problems
    # Every kind is there: tags from the table, a zip member, the linked folder, the escaped name.
    if not channels:
        assert len(items) == 4 + 4 + 3 + 3 + 1 + 1
        assert any(dict(it.meta.tags) == {"treatment": "taxol", "dose": "5"} for it in items)
        assert any(".zip/" in it.path and it.meta.z == 5 for it in items)
        assert any("/linked/" in it.path and it.meta.z == 9 for it in items)
        assert any(it.path.endswith("caf\\xe9.tif") for it in items)
        assert [p.kind for p in problems] == ["duplicate"]


def test_indices_and_slices_behave_like_a_list_s(mixed):
    data, table = mixed
    items, _ = list_items(_config(data, metadata=table))
    want = list(iter_sources(_config(data, metadata=table).sources, [], load_metadata_table(table)))
    n = len(want)
    for i in (0, 1, n - 1, -1, -n, -3):
        assert _as_tuples([items[i]]) == _as_tuples([want[i]])
    for bad in (n, -n - 1):
        with pytest.raises(IndexError):
            items[bad]
    for s in (slice(None), slice(2, 9), slice(None, None, 3), slice(-5, None), slice(None, None, -1),
              slice(10, 2, -2), slice(n + 5, None), slice(3, 3), slice(-100, 100, 4)):  # fmt: skip
        got = items[s]
        assert type(got) is type(items) and len(got) == len(want[s])
        assert _as_tuples(got) == _as_tuples(want[s])
    # compute_dataset_window's sample, a slice of a slice
    assert _as_tuples(items[::2][:3]) == _as_tuples(want[::2][:3])
    assert _as_tuples(items[::-1][1::2]) == _as_tuples(want[::-1][1::2])
    assert _as_tuples(reversed(items)) == _as_tuples(reversed(want))
    assert items[4] == items[4] and items.index(items[4]) == 4


def test_any_items_can_be_collected_and_read_back(tmp_path, real_images):
    """Items a caller makes (benchmarks: readers that are closures) keep their own reader."""
    from indexer.core.records import ImageMeta
    from indexer.images.source_list import SourceList

    blobs = [p.read_bytes() for p in real_images[:3]]
    given = [SourceItem(f"mem/{i}.tif", (lambda b=b: b), ImageMeta(z=i or None)) for i, b in enumerate(blobs)]
    items = SourceList.collect(iter(given))
    assert [(it.path, it.meta, it.read()) for it in items] == [(g.path, g.meta, g.read()) for g in given]
    assert [it.read for it in items] == [g.read for g in given]
    assert SourceList.collect(items) is items
    empty = SourceList.collect([])
    assert len(empty) == 0 and list(empty) == [] and list(empty[1:]) == []


# ------------------------------------------------------------------ files reached twice
def test_files_reached_twice_are_found_as_before(tmp_path, real_images):
    """Duplicates are the same real path (``os.path.realpath``), as before: a zip or a file given twice,
    a link to a file listed in either order, a link to a folder. A hard link is another path to the
    same bytes: listed under both names (the build's content hash then indexes it once)."""
    data = tmp_path / "data"
    a = _write(data / Z16 / real_images[0].name, real_images[0].read_bytes())
    _write(data / Z16 / real_images[1].name, real_images[1].read_bytes())
    (data / "0_first.tif").symlink_to(a)  # sorts before its target
    (data / Z16 / "zz_after.tif").symlink_to(a)  # sorts after it
    os.link(a, data / "hard.tif")
    z = tmp_path / "z.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(real_images[2].name, real_images[2].read_bytes())
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "again").symlink_to(data / Z16, target_is_directory=True)
    problems = []
    items = list(iter_sources(SourceConfig(paths=(data, z, data, a, z, tmp_path / "more")), problems))
    assert [it.path for it in items] == [str(data / "0_first.tif"), str(data / Z16 / real_images[1].name),
                                         str(data / "hard.tif"), f"{z}/{real_images[2].name}"]  # fmt: skip
    assert [(p.path, p.kind) for p in problems] == [
        (str(a), "duplicate"),
        (str(data / Z16 / "zz_after.tif"), "duplicate"),
        (str(data), "duplicate"),
        (str(a), "duplicate"),
        (str(z), "duplicate"),
        (str(tmp_path / "more" / "again"), "duplicate"),
    ]
    assert f"the same file as {data / '0_first.tif'}" in problems[0].reason
    assert f"the same file as {data / '0_first.tif'}" in problems[1].reason
    assert f"the same file as {z}," in problems[4].reason
    assert items[0].read() == items[2].read() == real_images[0].read_bytes()


def test_files_whose_real_paths_share_a_hash_are_not_taken_for_one(tmp_path, real_images, monkeypatch):
    """The lister keys the files it saw by a hash of their real path (not a second copy of the path): two
    files whose hashes collide are still two files."""
    import indexer.images.sources as sources

    monkeypatch.setattr(sources, "_path_hash", lambda real: 7)
    monkeypatch.chdir(tmp_path)  # a relative path: no file is listed under its real path
    for p in real_images[:3]:
        _write(tmp_path / "data" / Z16 / p.name, p.read_bytes())
    (tmp_path / "data" / "0_link.tif").symlink_to(tmp_path / "data" / Z16 / real_images[1].name)
    problems = []
    items = list(iter_sources(SourceConfig(paths=(Path("data"),)), problems))
    assert [it.path.rsplit("/", 1)[1] for it in items] == [
        "0_link.tif",
        real_images[0].name,
        real_images[2].name,
    ]
    assert [(p.kind, p.path.endswith(real_images[1].name)) for p in problems] == [("duplicate", True)]
    assert problems[0].reason.startswith("the same file as data/0_link.tif,")
    # Each file given again by its real path, and the link again: each found (the folder once, 3, 1).
    again = []
    files = [tmp_path / "data" / Z16 / p.name for p in real_images[:3]]
    listed = list(iter_sources(SourceConfig(paths=(Path("data"), *files, Path("data/0_link.tif"))), again))
    assert [it.path for it in listed] == [it.path for it in items]
    assert [p.kind for p in again] == ["duplicate"] * 5
    assert [p.reason.split(",")[0] for p in again[1:]] == [
        f"the same file as data/{Z16}/{real_images[0].name}",
        "the same file as data/0_link.tif",
        f"the same file as data/{Z16}/{real_images[2].name}",
        "the same file as data/0_link.tif",
    ]


def test_a_file_given_by_a_name_in_the_current_folder_is_resolved(tmp_path, real_images, monkeypatch):
    """The lister resolves a file's folder once for the files listed from it; a bare name's folder is
    the current one (its z-slice comes from there)."""
    folder = tmp_path / "data" / Z16
    for p in real_images[:2]:
        _write(folder / p.name, p.read_bytes())
    monkeypatch.chdir(folder)
    problems = []
    name = real_images[0].name
    items = list(iter_sources(SourceConfig(paths=(Path(name), Path("."), folder / name)), problems))
    assert [(it.path, it.meta.z) for it in items] == [(name, 16), (real_images[1].name, 16)]
    assert [(p.path, p.reason.split(",")[0]) for p in problems] == [
        (name, f"the same file as {name}"),
        (str(folder / name), f"the same file as {name}"),
    ]


def test_many_distinct_values_widen_their_codes(tmp_path):
    """A metadata table can give every image its own tags: 70,000 distinct values outgrow a byte and
    two, and still come back as they went in."""
    from indexer.core.records import ImageMeta
    from indexer.images.source_list import SourceList
    from indexer.images.sources import FileReader

    given = [SourceItem(f"/d/{i}.tif", FileReader(f"/d/{i}.tif"), ImageMeta(site=i % 3 or None,
                        tags=(("sample", str(i)),))) for i in range(70_000)]  # fmt: skip
    items = SourceList.collect(given)
    assert list(items) == given and items[-1] == given[-1] and items[300] == given[300]
    assert items._codes.dtype["tags"].itemsize == 4 and items._codes.dtype["site"].itemsize == 1
