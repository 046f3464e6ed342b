"""Jaccard distances between keep-masks, on masks small enough to count by hand; the table; the heatmap file."""

import pytest
import torch

from subcoder.pruner.errors import CacheError, ConfigError
from subcoder.pruner.overlap import compare, compare_dirs, heatmap, jaccard_distance, table

T, F = True, False


def m(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_distance_of_kept_sets():
    a = m([T, T, F, F])
    assert jaccard_distance(a, m([T, F, T, F])) == pytest.approx(2 / 3)  # kept together 1, kept by either 3
    assert jaccard_distance(a, a) == 0.0
    assert jaccard_distance(a, m([F, F, T, T])) == 1.0
    assert jaccard_distance(m([F, F]), m([F, F])) == 0.0  # nothing kept by either: identical, not undefined
    with pytest.raises(ConfigError, match="different shapes"):
        jaccard_distance(a, m([T, T]))


def _masks(layer0_up, layer1_up, layer0_q):
    return {"model.layers.0.mlp.up_proj.weight": layer0_up, "model.layers.1.mlp.up_proj.weight": layer1_up,
            "model.layers.0.self_attn.q_proj.weight": layer0_q}


def test_layers_and_sublayers_pool_counts_not_distances():
    a = _masks(m([T, T, F, F]), m([T, F], [T, F]), m([T, F]))
    b = _masks(m([T, F, T, F]), m([T, F], [T, F]), m([F, T]))
    pair = compare(a, b, "python", "java")
    # (intersection, union) per weight: layer0.up (1, 3), layer1.up (2, 2), layer0.q (0, 2)
    assert pair.a == "python" and pair.b == "java"
    assert pair.per_weight == pytest.approx({"model.layers.0.mlp.up_proj.weight": 2 / 3,
                                             "model.layers.1.mlp.up_proj.weight": 0.0,
                                             "model.layers.0.self_attn.q_proj.weight": 1.0})
    assert pair.per_layer == pytest.approx({0: 1 - 1 / 5, 1: 0.0})
    assert pair.per_sublayer == pytest.approx({"mlp.up_proj": 1 - 3 / 5, "self_attn.q_proj": 1.0})
    assert pair.model == pytest.approx(1 - 3 / 7)
    assert list(pair.per_layer) == [0, 1] and list(pair.per_sublayer) == ["mlp.up_proj", "self_attn.q_proj"]


def test_stored_mask_words_count_the_same_as_the_bool_masks():
    """The popcount over packed words (padding bits 0, top bits set: the sign of an int32) gives every
    distance the unpacked masks give, and words of other widths are refused."""
    from subcoder.pruner.packing import pack_mask

    g = torch.Generator().manual_seed(1)
    shapes = {"model.layers.0.mlp.up_proj.weight": (6, 70), "model.layers.1.mlp.up_proj.weight": (3, 64),
              "model.layers.0.self_attn.q_proj.weight": (5, 33)}
    a = {n: torch.rand(*s, generator=g) < 0.5 for n, s in shapes.items()}
    b = {n: torch.rand(*s, generator=g) < 0.5 for n, s in shapes.items()}
    a["model.layers.1.mlp.up_proj.weight"][:, 31] = True  # bit 31 of a word: a negative int32
    b["model.layers.1.mlp.up_proj.weight"][:, 31] = True
    words = lambda masks: {n: (pack_mask(t), t.shape[1]) for n, t in masks.items()}  # noqa: E731
    want, got = compare(a, b), compare(words(a), words(b))
    assert got.model == pytest.approx(want.model, abs=0) and got.per_layer == want.per_layer
    assert got.per_sublayer == want.per_sublayer and got.per_weight == want.per_weight
    w = words(a)
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ConfigError, match="different shapes"):
        compare(w, {**w, name: (w[name][0], 34)})
    with pytest.raises(TypeError, match="bool masks with bool masks"):
        jaccard_distance(a[name], w[name])


def test_masks_of_other_layers_are_refused():
    a = _masks(m([T]), m([T]), m([T]))
    with pytest.raises(ConfigError, match="pruned different layers"):
        compare(a, {k: v for k, v in a.items() if ".1." not in k})
    with pytest.raises(ConfigError, match="at least two"):
        compare_dirs([])
    with pytest.raises(ConfigError, match="at least one pair"):
        heatmap([], "unused.png")


def test_table_columns_line_up():
    a = _masks(m([T, T, F, F]), m([T, F]), m([T, F]))
    b = _masks(m([T, F, T, F]), m([T, F]), m([F, T]))
    lines = table([compare(a, b, "python", "prose"), compare(a, a, "python", "python-again")]).splitlines()
    assert lines[0].split() == ["a", "b", "model", "mlp.up_proj", "self_attn.q_proj"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["python", "prose", "0.6667", "0.5000", "1.0000"]
    assert lines[3].split() == ["python", "python-again", "0.0000", "0.0000", "0.0000"]
    starts = {line.index(line.split()[2]) for line in lines[2:]}
    assert len(starts) == 1  # the model column starts at the same place in every row


def _pairs():
    g = torch.Generator().manual_seed(0)
    langs = {name: _masks(*(torch.rand(4, 8, generator=g) < 0.5 for _ in range(3))) for name in ("python", "java", "cpp")}
    names = list(langs)
    return [compare(langs[x], langs[y], x, y) for i, x in enumerate(names) for y in names[i + 1:]]


def test_heatmap_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "docs" / "jaccard.png"
    path.parent.mkdir()
    path.write_bytes(b"an older heatmap")
    assert heatmap(_pairs(), path, title="test") == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["jaccard.png"]  # no temporary file left beside it


def test_heatmap_that_cannot_be_written_leaves_nothing(tmp_path):
    path = tmp_path / "jaccard.png"
    path.mkdir()  # a folder where the file should go: the final rename fails
    with pytest.raises(CacheError, match="cannot write"):
        heatmap(_pairs(), path)
    assert path.is_dir() and [p.name for p in tmp_path.iterdir()] == ["jaccard.png"]
