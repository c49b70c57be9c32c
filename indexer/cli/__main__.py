"""``python -m indexer.cli``: the same as ``mae-index``."""

from indexer.cli import main

main()
