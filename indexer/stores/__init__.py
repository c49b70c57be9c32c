"""Vector stores: one :class:`~indexer.stores.base.VectorStore` protocol, FAISS and Redis implementations."""
