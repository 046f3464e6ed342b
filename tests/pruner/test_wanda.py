"""The pure metric and mask functions, on matrices small enough to check by hand."""

import pytest
import torch

from subcoder.pruner.config import Pattern, PruneConfig
from subcoder.pruner.errors import ConfigError
from subcoder.pruner.wanda import NormAccumulator, column_sq_sums, lowest_per_row, mask_from_scores, wanda_scores


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


def sorted_reference(scores, sparsity, pattern=None):
    """The masks as a full stable sort defines them: the first k of each row (or block) in ascending order."""
    pattern = pattern or Pattern()
    out, cols = scores.shape
    if pattern.structured:
        blocks = scores.reshape(out, -1, pattern.m)
        keep = torch.ones_like(blocks, dtype=torch.bool)
        keep.scatter_(-1, torch.argsort(blocks, dim=-1, stable=True)[..., :pattern.n], False)
        return keep.reshape(out, cols)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :int(cols * sparsity)], False)
    return keep


def tie_heavy_scores(seed, rows=64, cols=96):
    """Few distinct values, so most rows have ties at their k-th value; zeros as a pruned weight leaves them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5, (rows, cols), generator=g).float() * torch.rand(1, cols, generator=g).round()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparsity", [0.01, 0.25, 0.5, 0.7, 0.99])
def test_selection_equals_stable_sort_ties_included(seed, sparsity):
    for scores in (tie_heavy_scores(seed), torch.rand(33, 257, generator=torch.Generator().manual_seed(seed))):
        assert torch.equal(mask_from_scores(scores, sparsity), sorted_reference(scores, sparsity))


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "3:4"])
def test_block_ranks_equal_stable_sort_ties_included(pattern):
    p = Pattern.parse(pattern)
    for seed in range(4):
        scores = tie_heavy_scores(seed)
        assert torch.equal(mask_from_scores(scores, p.sparsity, p), sorted_reference(scores, p.sparsity, p))
    assert torch.equal(mask_from_scores(torch.zeros(2, 8), p.sparsity, p), sorted_reference(torch.zeros(2, 8), 0, p))


def test_lowest_per_row_edges():
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    assert lowest_per_row(scores, 0).sum() == 0 and lowest_per_row(scores, 3).all()
    assert lowest_per_row(scores, 2).tolist() == [[False, True, True], [True, True, False]]


def test_column_sq_sums_skip_padding_and_leave_the_input_alone():
    x = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]], dtype=torch.bfloat16)
    before = x.clone()
    sq, tokens = column_sq_sums(x, torch.tensor([[True, False]]))
    assert sq.dtype == torch.float32 and sq.tolist() == [1.0, 4.0] and tokens == 1
    x32 = x.float()
    assert column_sq_sums(x32)[0].tolist() == [10.0, 5.0] and torch.equal(x, before) and torch.equal(x32, before.float())
