from pathlib import Path

import pytest

from indexer.bbbc006.names import bbbc006_file_name, parse_path, parse_z, z_folder_name
from indexer.core.records import ImageMeta, normalise_channel, normalise_well
from tests.conftest import REAL_DIR

DOC_NAMES = {
    "mcf-z-stacks-03212011_a01_s1_w1248254b0-0193-4e11-8762-62b5d2b86216.tif": ("A01", "A", 1, 1, "w1"),
    "mcf-z-stacks-03212011_i18_s2_w106ad4d95-6c95-4d70-9f10-7582af2ed02e.tif": ("I18", "I", 18, 2, "w1"),
    # The UUID starts with a digit: the channel is the ONE digit after "w", not "12".
    "mcf-z-stacks-03212011_k06_s2_w12667264a-6432-4f7e-bf58-625a1319a1c9.tif": ("K06", "K", 6, 2, "w1"),
}


@pytest.mark.parametrize("name,expected", DOC_NAMES.items())
def test_real_names_from_the_data_set_page(name, expected):
    m = parse_path(f"/data/BBBC006_v1_images_z_16/{name}")
    assert (m.well, m.row, m.column, m.site, m.channel) == expected
    assert m.plate == "mcf-z-stacks-03212011"
    assert m.z == 16


def test_every_shipped_real_image_parses():
    files = sorted(REAL_DIR.glob("*.tif"))
    assert len(files) == 20
    for f in files:
        m = parse_path(str(f))
        well = f.name.split("_")[1]
        site = int(f.name.split("_")[2][1])
        assert m.well == well.upper()
        assert m.row == well[0].upper() and m.column == int(well[1:])
        assert m.site == site and m.channel == "w2" and m.z == 16
        assert m.plate == "mcf-z-stacks-03212011"


def test_z_comes_from_zip_or_folder_not_file():
    name = "mcf-z-stacks-03212011_p24_s2_w21ba26baa-f546-4c74-9e14-e5fb29cbe5ba.tif"
    assert parse_path(f"/x/BBBC006_v1_images_z_03.zip/BBBC006_v1_images_z_03/{name}").z == 3
    assert parse_path(f"/x/BBBC006_v1_images_z_33.zip/{name}").z == 33
    assert parse_path(f"/x/BBBC006_v1_z16_images/{name}").z == 16
    assert parse_path(f"/x/other/{name}").z is None
    # The innermost folder wins.
    assert parse_z(["BBBC006_v1_images_z_01", "BBBC006_v1_images_z_02"]) == 2


def test_upper_case_and_windows_paths():
    m = parse_path(
        r"C:\d\BBBC006_v1_images_z_10\mcf-z-stacks-03212011_B07_s1_w2aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.TIF"
    )
    assert (m.well, m.site, m.channel, m.z) == ("B07", 1, "w2", 10)


@pytest.mark.parametrize(
    "name",
    [
        "notes.tif",
        "mcf-z-stacks-03212011_q01_s1_w1248254b0-0193-4e11-8762-62b5d2b86216.tif",  # row q does not exist
        "mcf-z-stacks-03212011_a25_s1_w1248254b0-0193-4e11-8762-62b5d2b86216.tif",  # column 25
        "mcf-z-stacks-03212011_a01_s1_w1.tif",  # no uuid
    ],
)
def test_names_that_do_not_parse_give_empty_metadata(name):
    m = parse_path(f"/data/{name}")
    assert m == ImageMeta() and not m.parsed


def test_normalisers_and_builders():
    assert normalise_well("a1") == normalise_well(" A01 ") == "A01"
    assert normalise_channel("1") == normalise_channel("W1") == "w1"
    with pytest.raises(ValueError):
        normalise_well("A")
    with pytest.raises(ValueError):
        normalise_channel("w12")
    uuid = "248254b0-0193-4e11-8762-62b5d2b86216"
    name = bbbc006_file_name("A01", 1, 1, uuid)
    assert name == f"mcf-z-stacks-03212011_a01_s1_w1{uuid}.tif"
    assert parse_path(str(Path(z_folder_name(5)) / name)).z == 5
