"""The benchmarks of mae-microscopy, run as ``python -m bench`` (see ``bench/__main__.py``)."""
