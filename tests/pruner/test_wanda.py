"""The pure metric and mask functions, on matrices small enough to check by hand."""

import pytest
import torch

from subcoder.pruner.config import Pattern, PruneConfig
from subcoder.pruner.errors import ConfigError
from subcoder.pruner.wanda import NormAccumulator, mask_from_scores, wanda_scores


def test_scores_are_abs_weight_times_input_norm():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    sq = torch.tensor([4.0, 1.0])  # norms 2 and 1
    assert torch.equal(wanda_scores(w, sq), torch.tensor([[2.0, 2.0], [6.0, 0.5]]))


def test_norms_must_fit_the_weight():
    w = torch.ones(2, 3)
    for bad in (torch.ones(2), torch.ones(1), torch.ones(3, 1)):
        with pytest.raises(ValueError, match="do not fit"):
            wanda_scores(w, bad)


def test_norms_exclude_padding():
    acc = NormAccumulator(2)
    x = torch.tensor([[[1.0, 2.0], [100.0, 100.0]]])  # (batch 1, 2 tokens, 2 features)
    acc.add(x, torch.tensor([[True, False]]))
    assert torch.equal(acc.sq_norms, torch.tensor([1.0, 4.0]))
    assert acc.tokens == 1


def test_unstructured_mask_is_per_row():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [40.0, 30.0, 20.0, 10.0]])
    keep = mask_from_scores(scores, 0.5)
    assert keep.tolist() == [[False, False, True, True], [True, True, False, False]]


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_every_row_keeps_the_same_count(sparsity):
    scores = torch.rand(37, 101, generator=torch.Generator().manual_seed(1))
    keep = mask_from_scores(scores, sparsity)
    assert (keep.sum(1) == 101 - int(101 * sparsity)).all()


def test_ties_break_by_column_so_masks_are_deterministic():
    keep = mask_from_scores(torch.ones(3, 8), 0.5)
    assert keep[:, :4].logical_not().all() and keep[:, 4:].all()


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_pattern_prunes_n_of_every_m(pattern):
    p = Pattern.parse(pattern)
    scores = torch.rand(16, 64, generator=torch.Generator().manual_seed(2))
    keep = mask_from_scores(scores, p.sparsity, p)
    blocks = keep.reshape(16, -1, p.m)
    assert (blocks.sum(-1) == p.m - p.n).all()
    # inside each block the kept ones are the highest scores
    s = scores.reshape(16, -1, p.m)
    assert (torch.where(blocks, s, torch.inf).amin(-1) >= torch.where(blocks, -torch.inf, s).amax(-1)).all()


def test_nm_pattern_needs_whole_blocks():
    with pytest.raises(ConfigError, match="divisible by 4"):
        mask_from_scores(torch.rand(2, 6), 0.5, Pattern.parse("2:4"))


def test_config_rejects_bad_input():
    for bad in (0, 1, -0.1, 1.5, "x", float("nan")):
        with pytest.raises(ConfigError):
            PruneConfig(sparsity=bad)
    with pytest.raises(ConfigError, match="2:4"):
        PruneConfig(sparsity=0.6, pattern="2:4")
    with pytest.raises(ConfigError):
        PruneConfig(pattern="4:2")
    with pytest.raises(ConfigError):
        PruneConfig(pattern="banana")
    with pytest.raises(ConfigError):
        PruneConfig(method="sparsegpt")
    assert PruneConfig(0.5, "2:4").slug() == "wanda-2of4"
    assert PruneConfig(0.3).slug() == "wanda-u30"
