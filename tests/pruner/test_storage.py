"""Sub-model directories: bit-exact round trip, size bound, atomic writes, refusal of damaged files."""

import json

import pytest
import torch

from subcoder.pruner.calibration import CalibrationSpec
from subcoder.pruner.config import PruneConfig
from subcoder.pruner.engine.options import EngineOptions
from subcoder.pruner.errors import CorruptError, ModelError
from subcoder.pruner.extract import extract
from subcoder.pruner.loader import load_model
from subcoder.pruner.storage import export_dense, load_masks, pack_mask, size_report, unpack_mask
from tiny_models import save_tiny_model_dir

PY = "def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n"


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    (ws / "pkg").mkdir(parents=True)
    for i in range(6):
        (ws / "pkg" / f"m{i}.py").write_text(PY.replace("add", f"add{i}") * 3)
    (ws / "node_modules").mkdir()
    (ws / "node_modules" / "junk.py").write_text("x = 1\n" * 100)
    return ws


@pytest.fixture(params=["llama", "qwen2", "gpt_neox"])
def base_dir(tmp_path, request):
    return save_tiny_model_dir(tmp_path / f"base-{request.param}", request.param)


def spec(ws):
    return CalibrationSpec(source="workspace", workspace=ws, n_samples=4, seq_len=64)


@pytest.mark.parametrize("shape", [(3, 1), (5, 31), (4, 32), (7, 33), (2, 100)])
def test_pack_unpack_roundtrip(shape):
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    words = pack_mask(keep)
    assert words.dtype == torch.int32 and words.shape == (shape[0], -(-shape[1] // 32))
    assert torch.equal(unpack_mask(words, shape[1]), keep)


def test_pack_bit_order_is_lsb_first():
    keep = torch.zeros(1, 40, dtype=torch.bool)
    keep[0, 0] = keep[0, 31] = keep[0, 33] = True
    words = pack_mask(keep)
    assert words[0, 0].item() == 1 - 2**31  # bits 0 and 31
    assert words[0, 1].item() == 2


def test_roundtrip_is_bit_exact(base_dir, workspace, tmp_path):
    base = load_model(str(base_dir))
    result = extract(base, "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    pruned_state = {k: v.clone() for k, v in base.model.state_dict().items()}  # extract pruned `base` in place
    sub = load_model(str(result.path), sparse=False)
    for name, tensor in sub.model.state_dict().items():
        assert torch.equal(tensor, pruned_state[name]), name
    masks = load_masks(result.path)
    assert set(masks) == set(result.manifest["pruned_weights"])
    for name, keep in masks.items():
        assert torch.equal(keep, pruned_state[name] != 0) or ((pruned_state[name] != 0) <= keep).all()
    m = result.manifest
    assert m["language"] == "python" and m["sparsity"] == 0.5 and m["pattern"] == "unstructured"
    assert m["calibration"]["fingerprint"] and m["base_hash"]
    assert sub.info.is_submodel


def test_compact_size_within_bound(base_dir, workspace, tmp_path):
    result = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    sizes = size_report(result.path)
    assert sizes["pruned_ratio"] <= 0.5625 + 1e-9
    assert result.sizes == sizes


def test_workspace_calibration_skips_vendored_dirs(base_dir, workspace, tmp_path):
    result = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    assert "6 workspace files" in result.manifest["calibration"]["description"] or "workspace files" in result.manifest["calibration"]["description"]


def test_same_inputs_same_fingerprint_and_bytes(base_dir, workspace, tmp_path):
    a = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "a")
    b = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "b")
    assert a.manifest["cache_key"] == b.manifest["cache_key"]
    assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()


def test_truncated_or_tampered_directory_is_refused(base_dir, workspace, tmp_path):
    result = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    weights = result.path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptError, match="checksum"):
        load_model(str(result.path))
    weights.write_bytes(data)
    load_model(str(result.path), sparse=False)
    manifest = json.loads((result.path / "manifest.json").read_text())
    (result.path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptError):
        load_model(str(result.path))
    (result.path / "manifest.json").write_text(json.dumps(manifest))
    (result.path / "config.json").unlink()
    with pytest.raises(Exception):
        load_model(str(result.path))


def test_export_dense_loads_with_plain_transformers(base_dir, workspace, tmp_path):
    from transformers import AutoModelForCausalLM

    result = extract(str(base_dir), "python", PruneConfig(0.5, "2:4"), spec(workspace), tmp_path / "sub")
    out = export_dense(result.path, tmp_path / "dense")
    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    sub = load_model(str(result.path), sparse=False)
    for name, tensor in sub.model.state_dict().items():
        assert torch.equal(tensor, plain.state_dict()[name]), name


def test_failed_write_leaves_nothing(base_dir, workspace, tmp_path, monkeypatch):
    import subcoder.pruner.storage as storage

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(storage, "sha256_file", boom)
    with pytest.raises(RuntimeError):
        extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    assert not (tmp_path / "sub").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sub")]


def test_offloaded_pruning_gives_the_same_submodel(base_dir, workspace, tmp_path):
    """Weights on disk, one layer in memory at a time: same masks and weights as in-memory pruning."""
    a = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "mem")
    b = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "disk", offload=True)
    assert a.manifest["cache_key"] == b.manifest["cache_key"]
    assert len(b.manifest["weights_files"]) == 1 + 2  # the rest + one file per decoder layer
    ma, mb = load_masks(a.path), load_masks(b.path)
    assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    sa = load_model(str(a.path), sparse=False).model.state_dict()
    sb = load_model(str(b.path), sparse=False).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.report.linear_sparsity == pytest.approx(0.5, abs=1e-3)
    assert not list(tmp_path.glob(".offload-*"))


def test_another_value_format_reuses_the_cached_masks(base_dir, workspace, tmp_path, monkeypatch):
    """`values: int8` after a bf16 build of the same sub-model (and back) takes the cached masks instead of a
    calibration pass, and writes exactly the files a fresh build writes."""
    from subcoder.pruner import extract as extract_module
    from subcoder.pruner.storage import _read_tensors

    cache = tmp_path / "cache"
    bf16 = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), cache_dir=cache)
    fresh = extract(str(base_dir), "python", PruneConfig(0.5, values="int8"), spec(workspace), tmp_path / "fresh",
                    cache_dir=cache, force=True)  # force: a full pruning run

    def no_pruning(*a, **k):
        raise AssertionError("the masks are cached: nothing to prune")

    monkeypatch.setattr(extract_module, "prune_model", no_pruning)
    reused = extract(str(base_dir), "python", PruneConfig(0.5, values="int8"), spec(workspace), cache_dir=cache)
    assert reused.manifest["masks_from"] == bf16.path.name and reused.manifest["timings"]["prune_s"] == 0.0
    assert reused.manifest["cache_key"] == fresh.manifest["cache_key"] and reused.path.parent == cache / "submodels"
    got, want = _read_tensors(reused.path)[0], _read_tensors(fresh.path)[0]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert reused.report.linear_sparsity == fresh.report.linear_sparsity
    # and back: with the bf16 sub-model gone, a bf16 build takes the int8 one's masks and writes the same files
    import shutil

    want = _read_tensors(bf16.path)[0]
    shutil.rmtree(bf16.path)
    again = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), cache_dir=cache)
    assert again.manifest["masks_from"] == reused.path.name and again.path == bf16.path
    got = _read_tensors(again.path)[0]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert load_model(str(again.path)).info.is_submodel
    # a cache of its own (the server's `cacheDir`): the twin beside the target is found there too
    from subcoder.pruner.extract import planned_key

    own = tmp_path / "server-cache"
    key = planned_key(str(base_dir), "python", PruneConfig(0.5), spec(workspace))
    monkeypatch.undo()  # this one prunes
    first = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), own / key, cache_dir=tmp_path / "other")
    monkeypatch.setattr(extract_module, "prune_model", no_pruning)
    int8_key = planned_key(str(base_dir), "python", PruneConfig(0.5, values="int8"), spec(workspace))
    beside = extract(str(base_dir), "python", PruneConfig(0.5, values="int8"), spec(workspace), own / int8_key,
                     cache_dir=tmp_path / "other")
    assert beside.manifest["masks_from"] == first.path.name


def test_planned_key_matches_extract(base_dir, workspace, tmp_path):
    from subcoder.pruner.extract import planned_key

    key = planned_key(str(base_dir), "python", PruneConfig(0.5), spec(workspace))
    result = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    assert key == result.manifest["cache_key"]


def test_device_auto_places_through_accelerate(base_dir, workspace, tmp_path):
    """`device="auto"` loads with accelerate's device map (all on the CPU here) and prunes the same."""
    a = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "cpu")
    b = extract(str(base_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "auto", device="auto")
    ma, mb = load_masks(a.path), load_masks(b.path)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


# --------------------------------------------------------------------------- the loader's kernel decision


@pytest.fixture
def submodel(tmp_path, workspace):
    base = save_tiny_model_dir(tmp_path / "base-llama", "llama")
    return extract(str(base), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub").path


@pytest.fixture
def no_kernel(monkeypatch):
    """This machine as one where the kernel cannot run (the real availability check, told the CPU lacks it)."""
    from subcoder.pruner.kernels import native

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_why_not_here", lambda: "the CPU has no AVX2+FMA (and no AVX-512 BF16)")


def _sparse_layers(loaded) -> int:
    from subcoder.pruner.kernels import SparseLinear

    return sum(isinstance(m, SparseLinear) for m in loaded.model.modules())


def test_kernel_decision():
    from subcoder.pruner.loader import kernel_decision

    assert kernel_decision(True, False) is True  # an explicit request wins over the option
    assert kernel_decision(False, True) is False
    assert kernel_decision(None, True) is None  # when available
    assert kernel_decision(None, False) is False


def test_required_kernel_fails_loudly_when_it_cannot_run(submodel, no_kernel):
    with pytest.raises(ModelError) as err:
        load_model(str(submodel), sparse=True)
    message = str(err.value)
    assert "sparse kernel" in message and "AVX2" in message and "\n" not in message


def test_kernel_when_available_falls_back_to_dense(submodel, no_kernel):
    loaded = load_model(str(submodel))
    assert not loaded.info.sparse_kernel and _sparse_layers(loaded) == 0


def test_kernel_runs_the_packed_weights_when_available(submodel):
    from subcoder.pruner.kernels import kernel_available

    ok, reason = kernel_available()
    if not ok:
        pytest.skip(reason)
    for sparse in (True, None):
        loaded = load_model(str(submodel), sparse=sparse)
        assert loaded.info.sparse_kernel and _sparse_layers(loaded) == 2 * 7, sparse
    dense = load_model(str(submodel), sparse=False)
    assert not dense.info.sparse_kernel and _sparse_layers(dense) == 0


def test_kernel_load_never_unpacks_the_pruned_weights(submodel, monkeypatch):
    """Where the kernel takes the pruned layers, their dense copies are never built (a 1.5B sub-model's
    load peaked at 9.8 GB with them), and the model computes what the dense load computes."""
    from subcoder.pruner import storage
    from subcoder.pruner.kernels import kernel_available

    ok, reason = kernel_available()
    if not ok:
        pytest.skip(reason)
    dense = load_model(str(submodel), sparse=False)
    monkeypatch.setattr(storage, "unpack_weight", lambda *a, **k: pytest.fail("a pruned weight was unpacked"))
    fast = load_model(str(submodel))
    assert fast.info.sparse_kernel and _sparse_layers(fast) == 2 * 7
    assert not any(t.is_meta for t in fast.model.state_dict().values())
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(fast.model(ids).logits.float(), dense.model(ids).logits.float(),
                                   atol=3e-2, rtol=3e-2)
    # storage alone leaves them on the meta device (no memory) for the loader to swap
    bare, packed = storage.load_submodel(submodel, packed_only=True)
    assert all(bare.model.get_submodule(name.rpartition(".")[0]).weight.is_meta for name in packed)


def test_options_turn_the_kernel_off_and_the_environment_is_their_default(submodel, monkeypatch):
    off = load_model(str(submodel), options=EngineOptions(sparse_kernel=False))
    assert not off.info.sparse_kernel and _sparse_layers(off) == 0
    monkeypatch.setenv("SUBCODER_SPARSE", "0")
    assert not load_model(str(submodel)).info.sparse_kernel


def test_submodel_without_its_manifest_is_refused(submodel):
    (submodel / "manifest.json").unlink()
    with pytest.raises(ModelError, match="without its manifest.json"):
        load_model(str(submodel))


def test_checkpoint_missing_a_weight_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_tiny_model_dir(tmp_path / "base", "qwen2")
    weights = directory / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="missing.*model.layers.1.mlp.up_proj.weight"):
        load_model(str(directory))


def test_submodel_missing_a_weight_is_refused(submodel):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from subcoder.pruner.loaded import sha256_file

    weights = submodel / "model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if k != "model.norm.weight"}
    save_file(tensors, str(weights), metadata=meta)
    manifest = json.loads((submodel / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(weights)  # consistent, only incomplete
    (submodel / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptError, match="missing.*model.norm.weight"):
        load_model(str(submodel), sparse=False)


# --------------------------------------------------------------------------- int8 kept values


def test_int8_values_config_and_cli():
    from subcoder.pruner.cli import build_parser, check_args
    from subcoder.pruner.errors import ConfigError, SubcoderError

    assert PruneConfig(0.5).slug() == "wanda-u50"  # the default adds nothing: existing cache keys stay valid
    assert PruneConfig(0.5, values="int8").slug() == "wanda-u50-int8"
    with pytest.raises(ConfigError, match="values must be one of bf16, int8"):
        PruneConfig(0.5, values="int4")
    parser = build_parser()
    assert parser.parse_args(["prune"]).values == "bf16"
    check_args(parser.parse_args(["prune", "--values", "int8"]))
    with pytest.raises(SubcoderError, match="--values must be bf16 or int8"):
        check_args(parser.parse_args(["prune", "--values", "fp8"]))


@pytest.fixture
def llama_dir(tmp_path):
    return save_tiny_model_dir(tmp_path / "base-llama", "llama")


def test_int8_values_roundtrip(llama_dir, workspace, tmp_path):
    """Stored as int8 + per-row scales, read back as exactly what the reference quantiser makes of the
    pruned weights; the kernel's layers then compute what the dequantised dense model computes."""
    from subcoder.pruner.kernels import SparseLinear, kernel_available
    from subcoder.pruner.storage import pack_weight_int8, read_manifest

    base = load_model(str(llama_dir), sparse=False)
    result = extract(base, "python", PruneConfig(0.5, values="int8"), spec(workspace), tmp_path / "sub")
    pruned = {k: v.to(torch.bfloat16) for k, v in base.model.state_dict().items()}  # as the checkpoint stores them
    assert result.manifest["values"] == "int8" and read_manifest(result.path)["values"] == "int8"
    assert "-int8-" in result.manifest["cache_key"]
    assert result.manifest["format_version"] == 2, "an older subcoder (reads 1) must refuse, not misread, int8"
    assert result.sizes["pruned_ratio"] < 0.36  # 0.3125 at 50%, plus one fp32 scale per (short) row
    dense = load_model(str(result.path), sparse=False)
    masks = load_masks(result.path)
    for name, keep in masks.items():
        _, q, scales = pack_weight_int8(pruned[name], keep)
        want = torch.zeros(keep.shape)
        want[keep] = q.float() * scales.repeat_interleave(keep.sum(1))
        assert torch.equal(dense.model.state_dict()[name], want.to(torch.bfloat16)), name
    ok, reason = kernel_available()
    if not ok:
        pytest.skip(reason)
    assert dense.info.weights_dtype == "bfloat16"  # not the scales' float32
    fast = load_model(str(result.path), sparse=True)
    layers = {n: m for n, m in fast.model.named_modules() if isinstance(m, SparseLinear)}
    assert len(layers) == len(masks) and all(m.value_format == "int8" for m in layers.values())
    for name, layer in layers.items():
        words, q, scales = pack_weight_int8(pruned[name + ".weight"], masks[name + ".weight"])
        packed = layer.packed()
        assert torch.equal(packed[0], words) and torch.equal(packed[1], q) and torch.equal(packed[2], scales)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        a, b = dense.model(ids).logits.float(), fast.model(ids).logits.float()
    torch.testing.assert_close(b, a, atol=3e-2, rtol=3e-2)  # bf16 dense weights vs int8 * scale in fp32


def test_offloaded_int8_gives_the_same_submodel(llama_dir, workspace, tmp_path):
    """Offloaded pruning stages bf16 values layer by layer; the saved sub-model re-encodes them."""
    config = PruneConfig(0.5, values="int8")
    a = extract(str(llama_dir), "python", config, spec(workspace), tmp_path / "mem")
    b = extract(str(llama_dir), "python", config, spec(workspace), tmp_path / "disk", offload=True)
    sa = load_model(str(a.path), sparse=False).model.state_dict()
    sb = load_model(str(b.path), sparse=False).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.sizes["pruned_ratio"] == pytest.approx(a.sizes["pruned_ratio"])


def test_unknown_value_format_is_refused(llama_dir, workspace, tmp_path):
    result = extract(str(llama_dir), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub")
    assert result.manifest["values"] == "bf16"
    manifest = json.loads((result.path / "manifest.json").read_text())
    manifest["values"] = "int4"
    (result.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptError, match="kept values 'int4'"):
        load_model(str(result.path))


def test_an_fp32_submodel_puts_its_bf16_exact_head_on_the_avx2_kernel(tmp_path, workspace):
    """A sub-model computed in fp32 (CPUs without native bf16) from a bf16 checkpoint: its dense lm_head goes
    on the kernel's bf16 matvec as an exact copy (AVX2 path: fp32 products), and the logits do not move."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    from subcoder.pruner.kernels import DenseBF16Linear, kernel_available
    from subcoder.pruner.kernels.debug import overrides

    if not kernel_available()[0]:
        pytest.skip(kernel_available()[1])
    base = save_tiny_model_dir(tmp_path / "base-llama", "llama")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.save_pretrained(base)
    sub = extract(str(base), "python", PruneConfig(0.5), spec(workspace), tmp_path / "sub", dtype="float32").path
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with overrides(isa=1), torch.inference_mode():
        loaded = load_model(str(sub), dtype="float32")
        head = loaded.model.get_output_embeddings()
        assert isinstance(head, DenseBF16Linear) and head.weight.dtype == torch.bfloat16
        kept = load_model(str(sub), dtype="float32", options=EngineOptions(dense_kernel=False))
        want = kept.model(input_ids=ids).logits
        assert type(kept.model.get_output_embeddings()) is nn.Linear, "dense_kernel off: the head stays torch's"
        got = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
