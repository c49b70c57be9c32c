"""The exception hierarchy of mae-microscopy.

Every error a user can meet derives from :class:`MaeError`. Messages say what failed, why, and
what to do next; the cause is chained with ``raise ... from``. The CLIs map :class:`ConfigError`
to exit code 2 and every other :class:`MaeError` to exit code 1.
"""

from __future__ import annotations


class MaeError(Exception):
    """Root of every error raised on purpose by this project."""


class ConfigError(MaeError):
    """An option, flag or configuration value is invalid (exit code 2)."""


class DecodeError(MaeError):
    """An image file could not be read or is not a usable microscopy image."""


class ModelLoadError(MaeError):
    """A model checkpoint could not be loaded (offline, missing, or not a ViT-MAE)."""


class StoreUnavailableError(MaeError):
    """A vector store (Redis, a FAISS folder) cannot be reached or opened."""


class IndexMismatchError(MaeError):
    """An index was built with a different model or preprocessing than the one asked for."""


class StoreFullError(MaeError):
    """The store refused a write because it is out of memory or space."""


class IndexBusyError(MaeError):
    """Another writer holds the index folder's write lock (``--no-wait``)."""


class IndexDamagedError(MaeError):
    """Part of an index (a shard, the snapshot, the manifest, Redis hashes) is missing or corrupt.

    ``ids`` names the damaged images where the damage is per image (Redis hashes).
    """

    def __init__(self, message: str, ids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ids = tuple(ids)


class ShrinkRefusedError(MaeError):
    """A mirror sync would delete vectors from the mirror, and ``--allow-shrink`` was not given."""


class EmptyBuildError(MaeError):
    """A build found no usable image: nothing to index (exit code 1, nothing written)."""
