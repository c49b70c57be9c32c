"""Download BBBC006 z-slice zips from the Broad Bioimage Benchmark Collection, with checksums.

Needs internet. Offline it fails at once with a clear message instead of hanging.
"""

from __future__ import annotations

import hashlib
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from indexer.bbbc006.constants import Z_SLICES
from indexer.bbbc006.names import z_folder_name
from indexer.core.atomic import atomic_write, file_sha256
from indexer.core.errors import ConfigError, MaeError

BASE_URL = "https://data.broadinstitute.org/bbbc/BBBC006/"


def zip_url(z: int) -> str:
    """Public URL of the zip of one z-slice."""
    return f"{BASE_URL}{z_folder_name(z)}.zip"


def _reachable(url: str, timeout: float = 5.0) -> bool:
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_bbbc006(out: Path, z_slices: tuple[int, ...], chunk: int = 1 << 20) -> Iterator[Path]:
    """Download the zips of ``z_slices`` into ``out`` (skipping complete ones); yield each zip path.

    Each file is written atomically and its SHA-256 is written beside it (``.sha256``), so a re-run
    verifies instead of downloading again.
    """
    from tqdm.auto import tqdm

    for z in z_slices:
        if z not in Z_SLICES:
            raise ConfigError(f"BBBC006 has z-slices {Z_SLICES.start}..{Z_SLICES.stop - 1}, not {z}")
    if not _reachable(BASE_URL):
        raise MaeError(
            f"cannot reach {urlparse(BASE_URL).hostname}: no internet here. Download the zips on a connected "
            f"machine ({zip_url(16)} ...) and pass the folder to `mae-index build`."
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for z in z_slices:
        target = out / f"{z_folder_name(z)}.zip"
        sums = target.with_suffix(".zip.sha256")
        if target.exists() and sums.exists() and file_sha256(target) == sums.read_text().split()[0]:
            yield target
            continue
        digest = hashlib.sha256()

        def fetch(tmp: Path, url: str = zip_url(z), target: Path = target, digest=digest) -> None:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                    for block in iter(lambda: r.read(chunk), b""):
                        f.write(block)
                        digest.update(block)
                        bar.update(len(block))

        atomic_write(target, fetch)
        sums.write_text(f"{digest.hexdigest()}  {target.name}\n")
        yield target
