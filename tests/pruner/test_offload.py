"""Pruning with the weights on disk, one decoder layer in memory at a time, against the same pruning in memory."""

import json

import pytest
import torch
from safetensors import safe_open

from subcoder.pruner.config import PruneConfig
from subcoder.pruner.loader import load_model
from subcoder.pruner.offload import DiskOffload
from subcoder.pruner.packing import unpack, unpack_mask
from subcoder.pruner.prune import decoder_layers, prune_model
from tiny_models import save_tiny_model_dir


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("base") / "tiny", "llama")


def calib(n=4, seq=24):
    ids = torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


def read_staged(staging):
    """name -> dense pruned weight (bf16, zeros where pruned) and name -> keep-mask, from the layer files."""
    weights, masks = {}, {}
    for f in sorted(staging.glob("layer-*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            shapes = json.loads(fh.metadata()["subcoder"])["pruned_shapes"]
            for name, (_, in_features) in shapes.items():
                words = fh.get_tensor(name + ".mask")
                masks[name] = unpack_mask(words, in_features)
                weights[name] = unpack(words, fh.get_tensor(name + ".values"), in_features)
    return weights, masks


@pytest.mark.parametrize("config", [PruneConfig(0.5), PruneConfig(0.5, "2:4"), PruneConfig(0.5, method="magnitude")])
def test_layer_by_layer_from_disk_prunes_like_in_memory(base_dir, tmp_path, config):
    ids, am = calib()
    in_memory = load_model(str(base_dir), dtype="float32", sparse=False)
    expected = prune_model(in_memory.model, ids, am, config, batch_size=2)

    disk = DiskOffload(base_dir, "tiny", dtype="float32", staging_parent=tmp_path)
    try:
        loaded = disk.build()
        assert torch.equal(loaded.model.get_input_embeddings().weight, in_memory.model.get_input_embeddings().weight)
        assert loaded.info.content_hash == in_memory.info.content_hash and loaded.info.weights_dtype == "bfloat16"
        result = prune_model(loaded.model, ids, am, config, batch_size=2,
                             load_layer=disk.load_layer, release_layer=disk.release_layer)
        assert result.masks == {}  # handed to release_layer, not kept
        assert sorted(p.name for p in disk.staging.iterdir()) == ["layer-0000.safetensors", "layer-0001.safetensors"]
        # every released layer gave its memory back
        _, layers = decoder_layers(loaded.model)
        assert all(p.is_meta for layer in layers for p in layer.parameters())
        weights, masks = read_staged(disk.staging)
    finally:
        disk.cleanup()
    assert not disk.staging.exists()

    assert set(masks) == set(expected.masks)
    for name, keep in expected.masks.items():
        assert torch.equal(masks[name], keep), name
        # stored in the checkpoint's bf16, which is exact: the fp32 values came from bf16
        dense = in_memory.model.get_parameter(name).detach().to(torch.bfloat16)
        assert torch.equal(weights[name], dense), name
    assert result.report.linear_sparsity == expected.report.linear_sparsity
    assert [r["sparsity"] for r in result.report.layers] == [r["sparsity"] for r in expected.report.layers]


def test_build_reads_everything_but_the_decoder_layers(base_dir, tmp_path):
    """Embeddings and the final norm come from the base files; a layer is read only on its turn, exactly."""
    disk = DiskOffload(base_dir, "tiny", dtype="float32", staging_parent=tmp_path)
    try:
        assert disk.staging.parent == tmp_path and disk.staging.name.startswith(".offload-")
        loaded = disk.build()
        with safe_open(str(base_dir / "model.safetensors"), framework="pt") as fh:
            assert torch.equal(loaded.model.model.norm.weight, fh.get_tensor("model.norm.weight").float())
            _, layers = decoder_layers(loaded.model)
            disk.load_layer(1, layers[1])
            for name, param in layers[1].named_parameters():
                assert torch.equal(param, fh.get_tensor(f"model.layers.1.{name}").float()), name
        assert list(disk.staging.iterdir()) == []  # nothing written before a layer is released
    finally:
        disk.cleanup()


def test_sharded_checkpoint_streams_to_the_same_sub_model(sharded_tiny_dir, py_calibration, tmp_path):
    """A checkpoint split over several safetensors files (as big models ship) prunes from disk, layer by layer,
    into the same masks and weights as the whole model in memory; the report carries both peak memories."""
    from subcoder.pruner.extract import extract
    from subcoder.pruner.storage import load_masks

    base = sharded_tiny_dir
    shards = sorted(base.glob("*.safetensors"))
    assert len(shards) > 2 and (base / "model.safetensors.index.json").is_file()
    whole = extract(str(base), "python", PruneConfig(0.5), py_calibration, tmp_path / "whole", dtype="float32")
    streamed = extract(str(base), "python", PruneConfig(0.5), py_calibration, tmp_path / "streamed", dtype="float32",
                       offload=True)
    a, b = load_masks(whole.path), load_masks(streamed.path)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert streamed.report.peak_host_bytes > 0 and streamed.report.peak_device_bytes == 0
    assert {"layer-0000.safetensors", "layer-0001.safetensors"} < set(streamed.manifest["weights_files"])
