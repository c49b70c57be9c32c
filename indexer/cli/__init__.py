"""The ``mae-index`` command line: :func:`main` (the group, in :mod:`.app`), one module per command
group, and the option groups all three CLIs share (:mod:`.options`)."""

from indexer.cli.app import main

__all__ = ["main"]
