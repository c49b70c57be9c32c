"""Issue 31, items 1-3: stacks whose metadata claims planes the file lacks, and files of very many pages.

A build runs in a subprocess under a 3 GB address-space cap (``RLIMIT_AS``) and its peak RSS is measured:
at b690aef a 2-page OME-TIFF claiming 65,536 z-planes and a 45 MB TIFF of 100,000 pages each ran out of
memory (every zero-filled or real plane was prepared before any was embedded), and a 3-page OME claiming
1,000 planes indexed 997 blank images with ``rejected 0``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from indexer.core.errors import DecodeError
from indexer.images.decode import decode_planes, decode_tiff
from tests.conftest import REPO

CAP = 3 * 2**30


def lying_ome(n_pages: int, size_z: int, side: int = 16) -> bytes:
    """An OME-TIFF of ``n_pages`` pages whose XML says ``SizeZ = size_z``."""
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
           f'SizeX="{side}" SizeY="{side}" SizeC="1" SizeZ="{size_z}" SizeT="1">'
           '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
           + "".join(f'<TiffData IFD="{i}" FirstZ="{i}" PlaneCount="1"/>' for i in range(n_pages))
           + "</Pixels></Image></OME>")  # fmt: skip
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        for i in range(n_pages):
            w.write(np.full((side, side), i + 1, np.uint8), photometric="minisblack",
                    description=xml if i == 0 else None, metadata=None)  # fmt: skip
    return buf.getvalue()


def many_pages(n: int) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((n, 16, 16), np.uint8), photometric="minisblack", metadata=None)
    return buf.getvalue()


def test_metadata_claiming_missing_planes_is_refused_from_the_header():
    claims = lying_ome(2, 65536)
    assert len(claims) < 1500
    with pytest.raises(DecodeError, match="claims 65536 planes but it holds 2 pages"):
        decode_planes(claims)
    with pytest.raises(DecodeError, match="claims 1000 planes but it holds 3 pages"):
        decode_planes(lying_ome(3, 1000))
    # A claim of 10^9 planes is refused before tifffile makes a list entry per claimed plane.
    with pytest.raises(DecodeError, match="claims 1000000000 planes"):
        decode_planes(lying_ome(1, 10**9))
    # An honest OME stack is read page by page, one plane alone where one is asked for.
    from indexer.images.decode import decode_plane

    honest = lying_ome(3, 3)
    assert [int(p.image[0, 0]) for p in decode_planes(honest)] == [1, 2, 3]
    assert int(decode_plane(honest, 2).image[0, 0]) == 3 and decode_plane(honest, 3) is None


def test_a_query_refuses_a_100k_page_file_before_decoding_it():
    data = many_pages(100_000)
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="100000 pages; the limit is 1000 planes per file"):
        decode_tiff(data)
    assert time.perf_counter() - t0 < 2.0  # b690aef decoded every page first
    from indexer.core.limits import DecodeLimits

    with pytest.raises(DecodeError, match="a stack of 3 planes"):
        decode_tiff(many_pages(3))
    assert len(decode_planes(many_pages(5), DecodeLimits(max_planes=5))) == 5
    with pytest.raises(DecodeError, match="5 pages; the limit is 4 planes"):
        decode_planes(many_pages(5), DecodeLimits(max_planes=4))


def test_a_build_under_a_3gb_cap_rejects_lying_and_huge_stacks_and_indexes_the_rest(tmp_path, real_images):
    data = tmp_path / "data"
    data.mkdir()
    (data / "claims65536.ome.tif").write_bytes(lying_ome(2, 65536))
    (data / "claims1000.ome.tif").write_bytes(lying_ome(3, 1000, side=32))
    (data / "pages100k.tif").write_bytes(many_pages(100_000))
    for p in real_images[:2]:
        shutil.copy(p, data / p.name)
    r, peak_mb = _build_in_child(data, tmp_path / "idx", cap=CAP)
    summary = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert (summary["indexed"], summary["rejected"], summary["complete"]) == (2, 3, False)
    with open(tmp_path / "idx" / "rejected.csv", newline="") as f:
        reasons = {row["path"].rsplit("/", 1)[1]: row["reason"] for row in csv.DictReader(f)}
    assert "claims 65536 planes but it holds 2 pages" in reasons["claims65536.ome.tif"]
    assert "claims 1000 planes but it holds 3 pages" in reasons["claims1000.ome.tif"]
    assert "100000 pages; the limit is 1000 planes per file" in reasons["pages100k.tif"]
    assert peak_mb < 1200, peak_mb  # b690aef: MemoryError at the 3 GB cap (OOM-killed without one)


def _build_in_child(
    data, index, *extra: str, cap: int | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """``mae-index build data --index index`` (tiny model, 2 workers, JSON summary) in a child process,
    under an address-space ``cap`` if given; the finished process and its peak RSS in MB.

    The child reports its own peak at exit: VmHWM, its address space's high-water mark. Not getrusage:
    RUSAGE_CHILDREN is the largest of every child this test session has waited for, and a child's
    RUSAGE_SELF keeps the pytest process's RSS from before its exec (Linux carries it over).
    """
    limit = f"resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap})); " if cap else ""
    code = (
        f"import atexit, re, resource, sys; {limit}"
        "atexit.register(lambda: print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', "
        "open('/proc/self/status').read()).group(1), file=sys.stderr)); "
        "sys.argv[0] = 'mae-index'; from indexer.cli import main; main()"
    )
    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"  # 224 px: 200 KB per prepared plane
    args = [sys.executable, "-c", code, "build", str(data), "--index", str(index), "--model", str(model),
            "--device", "cpu", "--workers", "2", "--no-progress", "--format", "json", *extra]  # fmt: skip
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    return r, int(r.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024


def _peak_build_mb(tmp_path, name: str, stacks: int, planes: int) -> tuple[float, dict]:
    """Build ``stacks`` honest stacks of ``planes`` pages each in a subprocess; its peak RSS (MB) and summary."""
    from bench.groups.stacks import write_stacks

    write_stacks(tmp_path / name, stacks, planes)
    r, peak_mb = _build_in_child(tmp_path / name, tmp_path / f"idx-{name}", "--batch-size", "16")
    assert r.returncode == 0, r.stderr
    return peak_mb, json.loads(r.stdout)


def test_a_build_of_large_stacks_holds_a_bounded_number_of_prepared_planes(tmp_path):
    """Item 2 across files: the build's window counted files, and each file's planes were all prepared
    before the model took one, so 4 stacks of 400 planes (within the 1,000-plane limit) held up to 1,600
    prepared planes (320 MB at 224 px) at once. Now each plane takes a slot of a budget of
    ``max(2 x batch, 4 x workers)`` planes across files, whatever the stacks' sizes.

    Peak RSS over the same build of 4 stacks of 10 planes: before (c59f047) 346 MB with stacks of 400
    (289 MB with 300); after 65 MB with stacks of 300 and 105 MB with 900 (a working set, flat in the
    plane count).
    """
    small, small_summary = _peak_build_mb(tmp_path, "small", 4, 10)
    large, large_summary = _peak_build_mb(tmp_path, "large", 4, 400)
    assert (small_summary["indexed"], large_summary["indexed"]) == (40, 1600)
    assert large - small < 150, (small, large)


def test_the_dataset_window_reads_one_page_of_each_stack(tmp_path):
    """``--intensity dataset`` samples the first plane of up to 64 files; before (c59f047) it decoded every
    plane of a stack to keep the first: 2 deflate stacks of 300 planes of 256 x 256 uint16 (39 MB decoded
    each, 2 MB on disk) peaked at 38 MB traced (19 MB with 150 planes). Now one page each: 3.6 MB, flat in
    the plane count."""
    import tracemalloc

    from indexer.core.records import ImageMeta
    from indexer.images.sources import SourceItem
    from indexer.ingest.plan import compute_dataset_window

    ramp = (np.arange(256 * 256, dtype=np.uint16).reshape(256, 256) // 64).astype(np.uint16)
    items = []
    for i in range(2):
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.stack([ramp + i + z for z in range(300)]), photometric="minisblack",
                         compression="zlib", metadata=None)  # fmt: skip
        data = buf.getvalue()
        assert len(data) < 4_000_000
        items.append(SourceItem(f"stack{i}.tif", lambda d=data: d, ImageMeta()))
    tracemalloc.start()
    try:
        low, high = compute_dataset_window(items, 1.0, 99.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 <= low < high <= 1100
    assert peak < 8 * 2**20, peak / 2**20
