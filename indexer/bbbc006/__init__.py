"""The BBBC006 data set: its constants, path names -> metadata, download, and a synthetic look-alike.

``constants`` and ``names`` are pure (no I/O); ``download`` fetches the real zips; ``synthetic`` writes
images that code reading BBBC006 cannot tell apart by layout.
"""
