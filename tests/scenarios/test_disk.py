"""Item 13 of issue 16: a read-only index folder fails before anything is embedded; a full disk is one
line that says what was kept, and the same command finishes the job once there is space."""

import errno
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.stores.faiss.store import FaissStore

Z16 = "BBBC006_v1_images_z_16"


def _mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    """Mount a small tmpfs at ``path`` when this process may (root in a container); False otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, f"mae{uuid.uuid4().hex[:8]}", str(path)],
                              capture_output=True).returncode == 0  # fmt: skip
    except OSError:
        return False


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: a read-only tmpfs as root (root ignores modes), else mode 0555."""
    d = tmp_path / "ro"
    mounted = os.geteuid() == 0 and _mount_tmpfs(d, "1m", read_only=True)
    if not mounted:
        d.mkdir(exist_ok=True)
        d.chmod(0o555)
    yield d
    if mounted:
        _umount(d)
    else:
        d.chmod(0o755)


def _build(data, index, model, *extra):
    args = ["build", str(data), "--index", str(index), "--model", str(model), "--device", "cpu", "--no-progress",
            "--batch-size", "2", "--checkpoint-every", "2", *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def test_read_only_index_folder_fails_before_embedding(
    read_only_dir, real_subset, tiny_model_dir, monkeypatch
):
    import indexer.model.encoder as enc

    loaded = []
    real_init = enc.ViTMAEEncoder.__init__
    monkeypatch.setattr(
        enc.ViTMAEEncoder, "__init__", lambda self, c: (loaded.append(1), real_init(self, c))[1]
    )
    for index in (read_only_dir, read_only_dir / "new-index"):
        t0 = time.monotonic()
        r = _build(real_subset, index, tiny_model_dir)
        assert r.exit_code == 1, r.output
        assert "is not writable" in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
        assert time.monotonic() - t0 < 5
    assert loaded == [], "the model was loaded (and images embedded) before the folder was found read-only"


def test_disk_full_is_one_line_saying_what_was_kept(tmp_path, real_images, tiny_model_dir, monkeypatch):
    first = tmp_path / "first" / Z16
    more = tmp_path / "more" / Z16
    for d, files in ((first, real_images[:4]), (more, real_images[4:12])):
        d.mkdir(parents=True)
        for p in files:
            shutil.copy(p, d / p.name)
    disk = tmp_path / "disk"
    mounted = os.geteuid() == 0 and _mount_tmpfs(disk, "2m")
    try:
        index = disk / "idx"
        assert _build(first.parent, index, tiny_model_dir).exit_code == 0
        filler = disk / "filler"
        if mounted:  # a real full disk: fill the tmpfs to the last byte
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            for size in (65536, 4096, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            os.close(fd)
        else:  # no mount allowed here: the kernel's answer injected at the write boundary
            import pyarrow.parquet as pq

            def full(*a, **k):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(pq, "write_table", full)
        r = _build(more.parent, index, tiny_model_dir)
        assert r.exit_code == 1
        lines = r.output.strip().splitlines()
        assert len(lines) == 1, r.output
        assert "is full" in lines[0] and "keeps the 4 images written before" in lines[0]
        assert FaissStore(index, read_only=True).count() == 4
        # Once there is space, the same command adds the rest.
        if mounted:
            filler.unlink()
        else:
            monkeypatch.undo()
        r = _build(more.parent, index, tiny_model_dir, "--format", "json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["indexed"] == 8
        assert FaissStore(index, read_only=True).count() == 12
        assert not list(index.rglob("*.tmp"))
    finally:
        if mounted:
            _umount(disk)
