"""The config module takes values already parsed: its defaults agree with the facts they stand for."""

from indexer.bbbc006.constants import SATURATION
from indexer.core.config import DEFAULT_FIXED_WINDOW, IntensityConfig


def test_the_fixed_window_defaults_to_bbbc006s_12_bit_range():
    # b690aef imported indexer.bbbc006.constants from core for this; core now imports nothing above it.
    assert DEFAULT_FIXED_WINDOW == (0.0, float(SATURATION)) == (0.0, 4095.0)
    assert IntensityConfig(mode="fixed").window == (0.0, 4095.0)
    assert IntensityConfig(mode="fixed", window=(0, 255)).window == (0.0, 255.0)
