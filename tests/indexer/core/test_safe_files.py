"""Reading an untrusted index folder's small files: regular files only, never blocking, within a bound,
and without allocating the bound for a small file."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from indexer.core.safe_files import NotARegularFile, open_regular, read_bounded, read_bounded_text


def test_a_small_file_costs_its_size_not_the_limit(tmp_path):
    """Before (c59f047): read(limit + 1) allocated the 64 MB limit for every manifest or state file read
    (64 MB traced for a 1 KB file, on every open, verify and served request that reads one)."""
    p = tmp_path / "manifest.json"
    p.write_text('{"a": 1}' * 128)
    tracemalloc.start()
    try:
        assert read_bounded_text(p) == '{"a": 1}' * 128
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * 2**20, peak


def test_over_the_limit_links_fifos_and_devices_are_refused(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b"x" * 101)
    assert read_bounded(p, limit=101) == b"x" * 101
    with pytest.raises(NotARegularFile, match="over 100 bytes"):
        read_bounded(p, limit=100)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotARegularFile, match="a FIFO"):
        read_bounded(tmp_path / "fifo")  # never waits for a writer
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(NotARegularFile, match="a device"):
        read_bounded(tmp_path / "zero")
    (tmp_path / "link").symlink_to(p)
    with pytest.raises(NotARegularFile, match="symbolic link"):
        open_regular(tmp_path / "link", follow=False)
    os.close(open_regular(tmp_path / "link"))  # followed where allowed
