"""The accelerator path: the same pruning on CUDA, whole-model and one layer at a time (offload).
Skipped where no CUDA device exists (CI's machines); run on a GPU machine to check it."""

import pytest
import torch

from subcoder.pruner.config import PruneConfig
from subcoder.pruner.extract import extract
from subcoder.pruner.prune import prune_model
from subcoder.pruner.storage import load_masks
from tiny_models import save_tiny_model_dir, tiny_model

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_cuda_masks_match_cpu(family):
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    cpu = prune_model(tiny_model(family), ids, am, PruneConfig(0.5))
    gpu = prune_model(tiny_model(family).cuda(), ids, am, PruneConfig(0.5))
    for name, keep in cpu.masks.items():
        assert (gpu.masks[name] == keep).float().mean() > 0.99, name
    assert gpu.report.peak_memory_bytes > 0


def test_offload_to_cuda_one_layer_at_a_time(tmp_path, py_calibration):
    base = save_tiny_model_dir(tmp_path / "base", "llama")
    a = extract(str(base), "python", PruneConfig(0.5), py_calibration, tmp_path / "gpu", device="cuda")
    b = extract(str(base), "python", PruneConfig(0.5), py_calibration, tmp_path / "off", device="cuda", offload=True)
    ma, mb = load_masks(a.path), load_masks(b.path)
    assert all((ma[k] == mb[k]).float().mean() > 0.99 for k in ma)


def test_device_auto_with_part_of_the_model_on_the_cpu(tmp_path, py_calibration):
    """`--device auto` when the model does not fit the GPU: a `max_memory` limit leaves decoder layers to the
    CPU, where accelerate keeps their weights and streams them to the GPU for each forward. Pruning reaches
    those host copies too, and the saved sub-model has the same masks as the whole model on the GPU."""
    from accelerate import infer_auto_device_map
    from transformers import AutoModelForCausalLM

    from subcoder.pruner.loaded import LoadedModel, ModelInfo
    from subcoder.pruner.presets import weights_hash
    from tiny_models import byte_tokenizer, tiny_config

    base = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama"), dtype=torch.bfloat16).save_pretrained(str(base))
    byte_tokenizer().save_pretrained(str(base))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(tiny_config("llama"), dtype=torch.bfloat16)
    one_layer = sum(p.numel() * 2 for p in skeleton.model.layers[0].parameters())
    outside = sum(p.numel() * 2 for n, p in skeleton.named_parameters() if ".layers." not in n)
    device_map = infer_auto_device_map(skeleton, max_memory={0: outside + one_layer + 1024, "cpu": 1 << 30},
                                       no_split_module_classes=["LlamaDecoderLayer"])
    assert "cpu" in device_map.values() and 0 in device_map.values(), device_map

    placed = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16, device_map=device_map).eval()
    tok = byte_tokenizer()
    info = ModelInfo("tiny", base, weights_hash(base), "LlamaForCausalLM", None, weights_dtype="bfloat16")
    auto = extract(LoadedModel(placed, tok, info), "python", PruneConfig(0.5), py_calibration, tmp_path / "auto")
    whole = extract(str(base), "python", PruneConfig(0.5), py_calibration, tmp_path / "gpu", device="cuda",
                    dtype="bfloat16")
    ma, mw = load_masks(auto.path), load_masks(whole.path)
    assert set(ma) == set(mw)
    assert all((ma[k] == mw[k]).float().mean() > 0.99 for k in ma)
    assert abs(auto.report.linear_sparsity - 0.5) < 0.01


def test_sharded_checkpoint_streams_through_the_gpu(sharded_tiny_dir, py_calibration, tmp_path):
    """`--device cuda --offload` on a checkpoint in several files: each layer is read from disk, pruned on
    the GPU a layer ahead of the copies, and written on its own; same masks as in memory on the GPU."""
    base, spec = sharded_tiny_dir, py_calibration
    whole = extract(str(base), "python", PruneConfig(0.5, "2:4"), spec, tmp_path / "whole", device="cuda",
                    dtype="bfloat16")
    streamed = extract(str(base), "python", PruneConfig(0.5, "2:4"), spec, tmp_path / "streamed", device="cuda",
                       dtype="bfloat16", offload=True)
    a, b = load_masks(whole.path), load_masks(streamed.path)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert streamed.report.peak_device_bytes > 0 and streamed.report.peak_host_bytes > 0
