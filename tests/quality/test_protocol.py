"""Pieces of the multi-seed protocol that need no training: aggregation, the seed summary, the table."""

import numpy as np
import pytest
import torch

from worker.quality.protocol import METRICS, aggregate, markdown, summarise


def test_neighbourhood_mean_averages_what_exists_at_the_edges():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = aggregate(x, 3)
    assert out.shape == x.shape
    assert out[0, 0, 1, 1] == pytest.approx(x[0, 0, :3, :3].mean())
    assert out[0, 0, 0, 0] == pytest.approx(x[0, 0, :2, :2].mean())  # corner: 4 neighbours, no zero padding
    assert torch.equal(aggregate(x, 1), x)


def test_summary_gives_mean_and_sample_spread_per_variant_over_seeds():
    runs = [{"hypothesis": "base", "rows": {"S=3 map_max": {k: v for k in METRICS}}} for v in (0.7, 0.8, 0.9)]
    summary = summarise(runs)
    auroc = summary["base / S=3 map_max"]["image_auroc"]
    assert auroc["mean"] == pytest.approx(0.8)
    assert auroc["std"] == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))
    assert auroc["values"] == [0.7, 0.8, 0.9]
    assert "| base / S=3 map_max | 0.800 ± 0.100 |" in markdown(summary, [0, 1, 2])
