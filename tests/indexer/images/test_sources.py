import shutil
import zipfile

import pytest

from indexer.core.config import SourceConfig
from indexer.core.errors import ConfigError
from indexer.images.sources import iter_sources


def _zip_folder(folder, zip_path):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*.tif")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
    return zip_path


def test_folder_is_walked_recursively_in_sorted_order(real_subset):
    items = list(iter_sources(SourceConfig(paths=(real_subset,))))
    assert len(items) == 6
    assert [i.path for i in items] == sorted(i.path for i in items)
    assert all(i.meta.z == 16 and i.meta.channel == "w2" for i in items)


def test_zip_members_are_read_without_extracting(tmp_path, real_subset):
    z = _zip_folder(real_subset / "BBBC006_v1_images_z_16", tmp_path / "BBBC006_v1_images_z_16.zip")
    items = list(iter_sources(SourceConfig(paths=(z,))))
    folder_items = list(iter_sources(SourceConfig(paths=(real_subset,))))
    assert len(items) == 6
    assert items[0].path.startswith(str(z) + "/BBBC006_v1_images_z_16/")
    assert [i.read() for i in items] == [i.read() for i in folder_items]
    assert [i.meta for i in items] == [i.meta for i in folder_items]
    assert not any(p.suffix == ".tif" for p in tmp_path.iterdir())


def test_zip_without_z_folder_takes_z_from_zip_name(tmp_path, real_images):
    z = tmp_path / "BBBC006_v1_images_z_07.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(real_images[0], real_images[0].name)
    (item,) = iter_sources(SourceConfig(paths=(z,)))
    assert item.meta.z == 7


def test_unsafe_and_broken_zips_become_problems(tmp_path, real_images):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        # ZipFile.write() sanitises names, so write raw ZipInfo entries as a hostile archive would.
        zf.writestr(zipfile.ZipInfo("../escape.tif"), real_images[0].read_bytes())
        zf.writestr(zipfile.ZipInfo("/abs/path.tif"), real_images[1].read_bytes())
        zf.write(real_images[2], "ok/" + real_images[2].name)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    problems = []
    items = list(iter_sources(SourceConfig(paths=(tmp_path,)), problems))
    assert [i.path.split("/")[-1] for i in items] == [real_images[2].name]
    reasons = sorted(p.reason for p in problems)
    assert len(reasons) == 3
    assert any("'..'" in r for r in reasons) and any("absolute" in r for r in reasons)
    assert any("cannot open zip" in r for r in reasons)


def test_channel_and_z_filters(tmp_path, real_images):
    for z in (15, 16):
        d = tmp_path / f"BBBC006_v1_images_z_{z}"
        d.mkdir()
        shutil.copy(real_images[0], d / real_images[0].name)
    assert len(list(iter_sources(SourceConfig(paths=(tmp_path,), z=(16,))))) == 1
    assert len(list(iter_sources(SourceConfig(paths=(tmp_path,), channels=("w1",))))) == 0
    assert len(list(iter_sources(SourceConfig(paths=(tmp_path,), channels=("w2",))))) == 2


def test_missing_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        list(iter_sources(SourceConfig(paths=(tmp_path / "nope",))))
