"""One build, two engines: :mod:`~indexer.build.plan` (listing, manifest handshake, the books),
:mod:`~indexer.build.prepare` (one item: read, hash, decode, preprocess), :mod:`~indexer.build.local`
(threads and a writer here), :mod:`~indexer.build.ray_engine` (the same on Ray Data) and
:mod:`~indexer.build.jobs` (open the stores, run an engine)."""
