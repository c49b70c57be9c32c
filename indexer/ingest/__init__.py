"""One build, two engines: :mod:`~indexer.ingest.plan` (listing, manifest handshake, the books),
:mod:`~indexer.ingest.prepare` (one item: read, hash, decode, preprocess), :mod:`~indexer.ingest.local`
(threads and a writer here), :mod:`~indexer.ingest.ray_engine` (the same on Ray Data) and
:mod:`~indexer.ingest.jobs` (open the stores, run an engine)."""
