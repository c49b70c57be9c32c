"""The warm HTTP JSON query server of ``mae-search serve``: the model and the index stay loaded, so a
query costs one forward pass.

- :mod:`~retriever.http.app`: requests, responses, routing and the JSON query API (the endpoints);
- :mod:`~retriever.http.service`: :class:`~retriever.http.service.QueryService`, the model and index
  work on one compute thread, apart from HTTP;
- :mod:`~retriever.http.transport`: waitress with a deadline per request, and :func:`~retriever.http.transport.make_server`;
- :mod:`~retriever.http.client`: the client of ``mae-search query --server URL``.
"""
