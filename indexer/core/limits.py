"""Every size and time limit on untrusted input, in one place.

Two frozen dataclasses: :class:`DecodeLimits` (what one image file may cost; the build and the query
server apply the same defaults through :func:`indexer.images.decode.decode_tiff`) and :class:`RequestLimits`
(what one HTTP request to ``mae-search serve`` may cost). The README's "Limits" table lists the same
numbers; change them here and there.

Why these defaults:

- 64 MP per image: the model sees 64-224 px a side, a BBBC006 field is 0.36 MP, a 8k x 8k mosaic is
  the largest single field of view worth embedding. A 16-bit 64 MP image is 128 MB decoded.
- Compression ratio 256 (decoded / file bytes) above 16 MB decoded: LZW or deflate on real camera images
  gives 1.2-4x (BBBC006: 1.4x); a file of zeros gives ~1,200x (16384 x 16384 in 430 KB). Small images
  are exempt because a tiny flat test pattern compresses just as well and costs nothing.
- 1,000 planes per file: a z-stack of a few hundred planes times a few channels. Each plane becomes one
  image (a 224 x 224 float tensor, 200 KB, once prepared), so the limit also bounds one file's share
  of a build's memory; a 45 MB TIFF of 100,000 16 x 16 pages would otherwise cost 20 GB prepared.
- 1,000 values per filter field, 1,000 characters per filter value, 1 MB per JSON body without an
  image: a 30 MB filter list cost up to 870 MB to parse and match; a plate has 384 wells, 4 channels.
- 2 live perturbations at once, one per client, of images up to 4 MP: a perturbation of a large image
  held the one compute thread 7-9 s, and 8 of them raised another client's median query to 4.4 s.
- 2,048 px a side for an explorer PNG: a 64 MP image's full view was a 53 MB PNG costing 680 MB.
- 64 images, 1,000 ids and 10,000 results (k x queries) per request keep one request's answer in the
  low megabytes; 1 GiB decoded per request bounds its CPU time. Images are decoded and preprocessed
  one at a time, so the pixels held at once are one image's (at most 128 MB), whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.core.errors import ConfigError

MB = 1024 * 1024
#: Largest JSON file of an index folder read (manifest.json, index.state.json, shard books): theirs are
#: kilobytes to a few megabytes; a link to /dev/zero or a planted huge file is refused, not read to OOM.
MAX_INDEX_JSON_BYTES = 64 * MB
#: Largest fitted normalisation (``normalize.npz``), on disk and unpacked: a mean and a float64 whitening
#: matrix are 13 MB at 1,280 dimensions (ViT-MAE huge) and 134 MB at 4,096; a planted file is refused.
MAX_TRANSFORM_BYTES = 256 * MB
#: Ranges of the numeric fields a ``--metadata`` table may give (inclusive): sites and z-planes count
#: from 0 or 1; a million of either is far beyond any plate, and well inside every store's integers.
METADATA_NUMBER_RANGES = {"site": (0, 1_000_000), "z": (0, 1_000_000)}


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding one image file may cost.

    Attributes
    ----------
    max_pixels : int
        Largest height x width accepted, checked from the TIFF header before any pixel is decoded.
    max_ratio : float
        Largest decoded-bytes / file-bytes ratio, checked from the header too (a decompression bomb).
    ratio_floor_bytes : int
        The ratio applies only to images larger than this when decoded.
    max_planes : int
        Most planes (pages) one file may hold, checked from its page count before tifffile builds a
        series; a stack's metadata may not claim more planes than the file has pages either.
    """

    max_pixels: int = 64 * MB
    max_ratio: float = 256.0
    ratio_floor_bytes: int = 16 * MB
    max_planes: int = 1000

    def __post_init__(self) -> None:
        if self.max_pixels < 16 * 16:
            raise ConfigError(f"the pixel limit must allow one 16 x 16 patch, got {self.max_pixels}")
        if self.max_ratio < 1:
            raise ConfigError(f"the compression-ratio limit must be >= 1, got {self.max_ratio}")
        if self.max_planes < 1:
            raise ConfigError(f"the plane limit must be >= 1, got {self.max_planes}")


@dataclass(frozen=True)
class RequestLimits:
    """What one HTTP request to the query server may cost, and how long its client may take.

    Attributes
    ----------
    max_body_bytes : int
        Largest request body (413 above it, answered from the header alone).
    max_images : int
        Images per ``/query/batch`` request.
    max_ids : int
        Ids per ``/query/ids`` request.
    max_results : int
        k x number of queries per request.
    max_decoded_bytes : int
        Decoded pixel bytes summed over one request's images.
    max_filter_values : int
        Values per filter field (``where``'s lists, ``/api/plate``'s channel and site).
    max_field_chars : int
        Characters per filter string value.
    max_json_bytes : int
        Body of a JSON request that carries no image (``/query/ids``, ``/api/perturb``): 413 above it,
        before the JSON is parsed.
    max_image_side : int
        Longest side of a PNG the explorer renders (``/image``, ``/thumb``): a larger image is shrunk.
    max_perturbs : int
        Live-panel perturbations (``/api/perturb``) running at once; one per client address (429 else).
    max_perturb_pixels : int
        Largest image the live panel perturbs (400 above it; ``mae-eval`` takes any size).
    request_timeout_s : float
        Time from a request's first byte to its last (headers and body); a client that dribbles is cut off.
    idle_timeout_s : float
        A connection with no activity for this long is closed.
    threads : int
        Worker threads that run requests (the pool is bounded; idle connections hold no thread).
    connection_limit : int
        Open connections served at once; more wait in the listen backlog.
    backlog : int
        Listen backlog.
    decode : DecodeLimits
        Per-image limits, the same as the build's by default.
    """

    max_body_bytes: int = 64 * MB
    max_images: int = 64
    max_ids: int = 1000
    max_results: int = 10_000
    max_decoded_bytes: int = 1024 * MB
    max_filter_values: int = 1000
    max_field_chars: int = 1000
    max_json_bytes: int = 1 * MB
    max_image_side: int = 2048
    max_perturbs: int = 2
    max_perturb_pixels: int = 4 * MB
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    threads: int = 8
    connection_limit: int = 1000
    backlog: int = 1024
    decode: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_ids", "max_results", "max_decoded_bytes",
                     "max_filter_values", "max_field_chars", "max_json_bytes", "max_image_side",
                     "max_perturbs", "max_perturb_pixels",
                     "threads", "connection_limit", "backlog"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ConfigError("timeouts must be > 0 seconds")
