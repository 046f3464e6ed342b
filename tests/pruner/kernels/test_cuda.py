"""The accelerator path: the same pruning on CUDA, whole-model and one layer at a time (offload).
Skipped where no CUDA device exists (CI's machines); run on a GPU machine to check it."""

import pytest
import torch

from subcoder.pruner.calibration import CalibrationSpec
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


def test_offload_to_cuda_one_layer_at_a_time(tmp_path):
    base = save_tiny_model_dir(tmp_path / "base", "llama")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.py").write_text("def f(x):\n    return x + 1\n" * 50)
    spec = CalibrationSpec(source="workspace", workspace=ws, n_samples=4, seq_len=64)
    a = extract(str(base), "python", PruneConfig(0.5), spec, tmp_path / "gpu", device="cuda")
    b = extract(str(base), "python", PruneConfig(0.5), spec, tmp_path / "off", device="cuda", offload=True)
    ma, mb = load_masks(a.path), load_masks(b.path)
    assert all((ma[k] == mb[k]).float().mean() > 0.99 for k in ma)
