"""experiments.tiny_sd.caption_stats on a few tiny renders."""

import pytest

from experiments.tiny_sd.caption_stats import SLOTS, caption_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def test_caption_stats_counts_every_item_once():
    stats = caption_stats(6, 16, seed=2)
    assert stats["count"] == 6 and 1 <= stats["distinct"] <= 6
    assert list(stats["slots"]) == list(SLOTS)
    assert all(sum(words.values()) == 6 for words in stats["slots"].values())
    assert 0 < stats["coverage"] <= 1
    assert all(0 <= rate <= 1 for rate in stats["colour_agreement"].values())
