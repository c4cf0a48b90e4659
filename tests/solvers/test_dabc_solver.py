import pytest
import torch

from mqcompile.solvers import plan_dabc
from mqcompile.solvers.dabc import mean_step


def _tokens(seed, t=512, k=96):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, k, generator=g), g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_picks_exactly_the_planted_long_tailed_channels(seed):
    x, g = _tokens(seed)
    planted = sorted(torch.randperm(96, generator=g)[:3].tolist())
    for i, ch in enumerate(planted):
        # long-tailed: a large offset plus a heavy (exponential) tail
        x[:, ch] = (25 + 10 * i) * (1 if i % 2 else -1) + torch.empty(512).exponential_(generator=g) * 3
    plan = plan_dabc(x)
    assert plan.channels == planted
    assert mean_step(x, plan.shift) < 0.3 * mean_step(x)
    # centers are robust (median) centers of those channels
    torch.testing.assert_close(plan.center[planted], x[:, planted].median(0).values)


def test_no_outliers_no_shift():
    x, _ = _tokens(5)
    assert plan_dabc(x).channels == []


def test_symmetric_outlier_is_not_shifted():
    x, _ = _tokens(6)
    x[:, 4] *= 40  # huge but centered at 0: shifting cannot help, clipping must
    assert plan_dabc(x).channels == []


def test_budget_and_empty():
    x, _ = _tokens(7)
    x[:, :10] += 50
    # ten channels with the same offset must move together: four of them cannot lower any token's maximum
    assert plan_dabc(x, max_channels=16).channels == list(range(10))
    assert plan_dabc(x, max_channels=4).channels == []
    assert plan_dabc(torch.empty(0, 8)).channels == []
