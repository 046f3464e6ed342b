"""The packed layout (docs/ARCHITECTURE.md, "Storage format") on matrices small enough to check by hand."""

import pytest
import torch

from subcoder.pruner.packing import n_words, pack_mask, pack_rows, row_counts, row_offsets, unpack, unpack_mask

T, F = True, False


def test_bits_are_lsb_first_one_word_per_32_columns():
    mask = torch.tensor([[T, F, T], [F, F, F], [F, T, T]])
    assert pack_mask(mask).tolist() == [[0b101], [0], [0b110]]
    wide = torch.zeros(1, 40, dtype=torch.bool)
    wide[0, 31] = wide[0, 32] = wide[0, 39] = True  # word 0: bit 31 is the sign bit; word 1: bits 0 and 7
    words = pack_mask(wide)
    assert words.dtype == torch.int32 and words.tolist() == [[-(2**31), 1 + 2**7]]


@pytest.mark.parametrize("in_features, words", [(1, 1), (31, 1), (32, 1), (33, 2), (64, 2), (65, 3)])
def test_padding_bits_are_zero(in_features, words):
    """All columns kept: every real bit set, and none of the padding bits past `in_features`."""
    packed = pack_mask(torch.ones(2, in_features, dtype=torch.bool))
    assert n_words(in_features) == words and packed.shape == (2, words)
    full_words, rest = divmod(in_features, 32)
    expected = [-1] * full_words + ([(1 << rest) - 1] if rest else [])
    assert packed.tolist() == [expected, expected]


def test_counts_and_offsets():
    mask = torch.tensor([[T, T, F], [F, F, F], [T, F, T], [F, F, T]])
    words = pack_mask(mask)
    assert row_counts(words).tolist() == [2, 0, 2, 1]
    assert row_offsets(words).tolist() == [0, 2, 2, 4, 5]  # the last entry is nnz
    wide = torch.ones(2, 70, dtype=torch.bool)
    wide[1, ::2] = False
    assert row_offsets(pack_mask(wide)).tolist() == [0, 70, 105]


def test_values_row_by_row_columns_ascending():
    weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[T, F, T], [F, F, F], [F, T, T]])
    words, values = pack_rows(weight, mask)
    assert values.dtype == torch.bfloat16 and values.tolist() == [1.0, 3.0, 8.0, 9.0]
    assert words.tolist() == [[0b101], [0], [0b110]]
    assert pack_rows(weight, mask, dtype=None)[1].dtype == torch.float32
    dense = unpack(words, values, 3, torch.float32)
    assert dense.tolist() == [[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 8.0, 9.0]]


def test_values_kept_as_int16_bits_unpack_as_bf16():
    """The sparse layer holds bf16 values as int16 so `model.to(dtype)` cannot convert them."""
    weight = torch.tensor([[1.5, -2.25]])
    words, values = pack_rows(weight, torch.tensor([[T, T]]))
    assert unpack(words, values.view(torch.int16), 2).tolist() == [[1.5, -2.25]]
    padded = torch.cat([values, torch.full((8,), 7.0, dtype=torch.bfloat16)])  # the layer's padding is ignored
    assert unpack(words, padded, 2).tolist() == [[1.5, -2.25]]


@pytest.mark.parametrize("shape", [(1, 1), (3, 31), (4, 32), (5, 33), (7, 100)])
def test_round_trip(shape):
    g = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    weight = torch.randn(shape, generator=g).to(torch.bfloat16)
    mask = torch.rand(shape, generator=g) < 0.5
    mask[0] = False  # an empty row
    words, values = pack_rows(weight, mask)
    assert values.numel() == int(mask.sum()) == int(row_offsets(words)[-1])
    assert torch.equal(unpack_mask(words, shape[1]), mask)
    assert torch.equal(unpack(words, values, shape[1]), weight * mask)


def test_malformed_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        pack_mask(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="int32"):
        unpack_mask(torch.zeros(2, 1, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="in_features=40"):
        unpack_mask(torch.zeros(2, 1, dtype=torch.int32), 40)
    with pytest.raises(ValueError, match="keeps 2 values but only 1"):
        unpack(pack_mask(torch.tensor([[T, T]])), torch.ones(1), 2)
    with pytest.raises(ValueError, match="same 2-D shape"):
        pack_rows(torch.ones(2, 3), torch.ones(3, 2, dtype=torch.bool))
