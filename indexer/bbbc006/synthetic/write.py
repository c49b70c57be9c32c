"""Write a synthetic data set: real-layout TIFFs (atomically) and the ground-truth CSV."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.bbbc006.names import parse_path, z_folder_name
from indexer.bbbc006.synthetic.phenotypes import GROUND_TRUTH_COLUMNS, SiteTruth
from indexer.bbbc006.synthetic.render import render_site
from indexer.bbbc006.synthetic.spec import SyntheticConfig, image_path
from indexer.core.csv_safe import dict_writer
from indexer.core.errors import ConfigError
from indexer.images.decode import SYNTHETIC_MARKER

GROUND_TRUTH_NAME = "BBBC006_synthetic_ground_truth.csv"


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote."""

    n_images: int
    seconds: float
    ground_truth: Path
    out_dir: Path = field(default=Path("."))

    @property
    def images_per_minute(self) -> float:
        """Write rate (images per minute of wall time)."""
        return 60.0 * self.n_images / self.seconds if self.seconds > 0 else float("inf")


#: The ImageDescription of every synthetic TIFF (see :func:`indexer.images.decode.image_source`).
SYNTHETIC_DESCRIPTION = f"mae-microscopy synthetic BBBC006 look-alike ({SYNTHETIC_MARKER}); not a real image"


def _write_tiff(path: Path, image: np.ndarray) -> None:
    """Write ``image`` with the real BBBC006 TIFF layout, atomically (temp name, then os.replace).

    Little-endian, LZW without predictor, 11 rows per strip, 72 dpi, orientation tag, no Software tag,
    and one difference from the real files: an ImageDescription that says the image is synthetic
    (:data:`~indexer.images.decode.SYNTHETIC_MARKER`), so an index, a report or a user who copies the file
    elsewhere can tell it from a real one.
    """
    import tifffile

    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tifffile.imwrite(
            tmp,
            image,
            byteorder="<",
            photometric="minisblack",
            compression="lzw",
            predictor=False,
            rowsperstrip=11,
            description=SYNTHETIC_DESCRIPTION,
            metadata=None,
            software=False,
            resolution=(72.0, 72.0),
            resolutionunit="INCH",
            extratags=[(274, "H", 1, 1, True)],  # Orientation = top-left, as in the real files
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_no_conflicts(config: SyntheticConfig) -> None:
    """Refuse to add images beside ones of the same plate/well/site/channel/z under another name.

    Another seed gives other UUIDs, so writing into a folder made with a different seed would leave
    two images of one field of view side by side.
    """
    wanted = {(w, s, c) for w in config.wells for s in config.sites for c in config.channels}
    for z in config.z_slices:
        folder = config.out_dir / z_folder_name(z)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = parse_path(str(p))
            if not m.parsed or m.plate != config.plate:
                continue
            key = (m.well, m.site, int(m.channel[1:]))
            if (
                key in wanted
                and p.name != image_path(config.out_dir, *key, z, config.seed, config.plate).name
            ):
                raise ConfigError(
                    f"{p} already holds well {m.well} site {m.site} {m.channel} z{z} from another seed; "
                    "write to an empty folder, or delete the old images first"
                )


def _write_ground_truth(path: Path, truths: Sequence[SiteTruth]) -> None:
    """Write the ground-truth CSV, keeping rows of other (plate, well, site) already in the file.

    So several runs into one folder (e.g. more wells later) leave one CSV describing all of them.
    """
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    if path.is_file():
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if set(GROUND_TRUTH_COLUMNS) <= set(r):
                    rows[(r["plate"], r["well"], r["site"])] = {k: r[k] for k in GROUND_TRUTH_COLUMNS}
    for t in truths:
        rows[(t.plate, t.well, str(t.site))] = t.to_row()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with tmp.open("w", newline="") as f:
            writer = dict_writer(f, GROUND_TRUTH_COLUMNS)
            writer.writeheader()
            for key in sorted(rows):
                writer.writerow(rows[key])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_site(config: SyntheticConfig, well: str, site: int) -> tuple[SiteTruth, int]:
    """Render one field of view and write its images; return its truth and the number written.

    Everything drawn depends on ``(seed, well, site[, channel, z])`` only, so sites can be written in
    any order, by any number of processes, with the same bytes.
    """
    rendered = render_site(well, site, seed=config.seed, channels=config.channels,
                           z_slices=config.z_slices, plate=config.plate, family=config.family)  # fmt: skip
    for (channel, z), image in rendered.images.items():
        _write_tiff(image_path(config.out_dir, well, site, channel, z, config.seed, config.plate), image)
    return rendered.truth, len(rendered.images)


def _write_site_job(job: tuple[SyntheticConfig, str, int]) -> tuple[SiteTruth, int]:
    return _write_site(*job)


def generate(config: SyntheticConfig, progress: bool = False, workers: int = 1) -> GenerationSummary:
    """Write the images of ``config`` and the ground-truth CSV; return what was written.

    Images go to ``out_dir/BBBC006_v1_images_z_XX/<plate>_<well>_s<site>_w<channel><uuid>.tif``
    (see :func:`image_path`), each written to a temporary name and renamed, so an interrupted run
    never leaves a truncated TIFF. Rerunning with the same seed rewrites identical files.
    ``out_dir/BBBC006_synthetic_ground_truth.csv`` gets one row per (well, site), merged with rows
    already there.

    Parameters
    ----------
    config : SyntheticConfig
        What to write.
    progress : bool
        Show a tqdm progress bar on stderr.
    workers : int
        Processes rendering sites in parallel. The files do not depend on it: each image's random
        draws come from ``(seed, well, site, channel, z)``, never from the order sites are done in.

    Returns
    -------
    GenerationSummary

    Raises
    ------
    ConfigError
        If the folder already holds images of the same fields of view made with another seed.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    _check_no_conflicts(config)
    for z in config.z_slices:
        (config.out_dir / z_folder_name(z)).mkdir(parents=True, exist_ok=True)
    truths: list[SiteTruth] = []
    with tqdm(
        total=config.n_images, unit="img", desc="synth", disable=not progress, dynamic_ncols=True
    ) as bar:
        jobs = [(config, well, site) for well in config.wells for site in config.sites]
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                # map() returns in submission order, so the ground truth is ordered as with one worker.
                for truth, written in pool.map(_write_site_job, jobs):
                    truths.append(truth)
                    bar.update(written)
        else:
            for job in jobs:
                truth, written = _write_site_job(job)
                truths.append(truth)
                bar.update(written)
    ground_truth = config.out_dir / GROUND_TRUTH_NAME
    _write_ground_truth(ground_truth, truths)
    return GenerationSummary(
        n_images=config.n_images,
        seconds=time.perf_counter() - start,
        ground_truth=ground_truth,
        out_dir=config.out_dir,
    )
