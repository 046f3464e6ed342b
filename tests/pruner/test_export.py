"""`subcoder export --format compressed-tensors`: the compressed-tensors library decompresses the export to
exactly the sub-model's weights, and transformers runs it to the same greedy tokens as subcoder's loader."""

import json

import numpy
import pytest
import torch

from subcoder.pruner import cli
from subcoder.pruner.calibration import CalibrationSpec
from subcoder.pruner.config import PruneConfig
from subcoder.pruner.errors import ModelError
from subcoder.pruner.export import SPARSE_24, SPARSE_BITMASK, compress_24, export, export_compressed, pack_bits
from subcoder.pruner.extract import extract
from subcoder.pruner.loader import load_model
from subcoder.pruner.storage import dense_state
from tiny_models import save_tiny_model_dir

PY = "def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n"
PROMPT = "def is_even(n):\n    return "

# compressed-tensors 0.13 is the last release with the sparse compressors (later ones dropped them)
compressed_tensors = pytest.importorskip(
    "compressed_tensors.compressors.sparse_compressors",
    reason="compressed-tensors==0.13.0 (the `test` extra) is not installed: the export cannot be decompressed")


def spec(ws):
    return CalibrationSpec(source="workspace", workspace=ws, n_samples=2, seq_len=64)


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    for i in range(4):
        (ws / f"m{i}.py").write_text(PY.replace("add", f"add{i}") * 3)
    return ws


def _submodel(tmp_path, workspace, family, pattern):
    base = save_tiny_model_dir(tmp_path / f"base-{family}", family)
    return extract(str(base), "python", PruneConfig(0.5, pattern), spec(workspace), tmp_path / "sub").path


def _decompress(out):
    """The library's own reading of the folder: (config's compressor, name -> dense tensor)."""
    from compressed_tensors.compressors import ModelCompressor

    compressor = ModelCompressor.from_pretrained(str(out))
    return compressor, dict(compressor.sparsity_compressor.decompress(str(out)))


def _load_with_transformers(out):
    """transformers builds the model from the export's config; compressed-tensors fills in its weights.

    transformers >= 5 refuses sparse compressed-tensors folders in `from_pretrained` (it needs a
    compressed-tensors release without sparse support), so this is the route its older integration took.
    """
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(out))
    compression = config.quantization_config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    ModelCompressor.from_compression_config(compression).decompress(str(out), model)
    model.tie_weights()
    return model.eval(), AutoTokenizer.from_pretrained(str(out))


def _greedy(model, tokenizer, n=16):
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("shape", [(3, 1), (2, 8), (5, 13), (4, 64)])
def test_pack_bits_is_numpy_packbits_little(shape):
    keep = torch.rand(shape) > 0.5
    expected = numpy.packbits(keep.numpy(), axis=-1, bitorder="little")
    assert numpy.array_equal(pack_bits(keep).numpy(), expected)


def test_compress_24_refuses_a_mask_that_is_not_2_of_4():
    weight = torch.randn(2, 8)
    keep = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    with pytest.raises(ModelError, match="not 2:4"):
        compress_24(weight, keep)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("family,pattern,fmt", [("llama", "2:4", SPARSE_24), ("gpt_neox", "2:4", SPARSE_24),
                                                ("qwen2", "unstructured", SPARSE_BITMASK),
                                                ("llama", "4:8", SPARSE_BITMASK)])
def test_library_decompresses_the_exact_weights(tmp_path, workspace, family, pattern, fmt):
    sub = _submodel(tmp_path, workspace, family, pattern)
    out = export_compressed(sub, tmp_path / "ct")
    compressor, decompressed = _decompress(out)
    assert compressor.sparsity_config.format == fmt and compressor.quantization_config is None
    state, masks, _ = dense_state(sub)
    assert set(decompressed) == set(state)
    for name, tensor in state.items():
        assert decompressed[name].dtype == tensor.dtype, name
        assert torch.equal(decompressed[name].view(torch.int16 if tensor.dtype == torch.bfloat16 else tensor.dtype),
                           tensor.view(torch.int16 if tensor.dtype == torch.bfloat16 else tensor.dtype)), name
    sparsity = json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert sorted(sparsity["targets"]) == sorted(n.removesuffix(".weight") for n in masks)
    assert sparsity["sparsity_structure"] == pattern


def test_a_kept_zero_survives(tmp_path, workspace):
    """The bitmask is the sub-model's mask, not `W != 0`: a kept -0.0 comes back as -0.0 in its place."""
    from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import sparse24_bitmask_decompress

    from subcoder.pruner.export import compress_24

    weight = torch.tensor([[-0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0]], dtype=torch.bfloat16)
    keep = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 1]], dtype=torch.bool)
    t = compress_24(weight, keep)
    back = sparse24_bitmask_decompress(t["compressed"], t["bitmask"], [1, 8])
    assert torch.equal(back.view(torch.int16), weight.view(torch.int16))


def test_folder_has_tokenizer_card_and_manifest(tmp_path, workspace):
    sub = _submodel(tmp_path, workspace, "llama", "2:4")
    out = export(sub, tmp_path / "ct", "compressed-tensors")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "subcoder_manifest.json"} <= names
    assert "manifest.json" not in names  # not a subcoder sub-model: never loaded as one
    card = (out / "README.md").read_text()
    manifest = json.loads((out / "subcoder_manifest.json").read_text())
    for fact in (manifest["base_model"], "python", "2:4", manifest["calibration"]["fingerprint"], SPARSE_24,
                 "vllm serve"):
        assert fact in card, fact


def test_transformers_gives_the_same_greedy_tokens(tmp_path, workspace):
    sub = _submodel(tmp_path, workspace, "llama", "2:4")
    out = export_compressed(sub, tmp_path / "ct")
    model, tokenizer = _load_with_transformers(out)
    ours = load_model(str(sub), dtype="bfloat16", sparse=False)
    assert _greedy(model, tokenizer) == _greedy(ours.model, ours.tokenizer)


def test_cli_export_formats(tmp_path, workspace, capsys):
    sub = _submodel(tmp_path, workspace, "llama", "unstructured")
    assert cli.main(["export", str(sub), str(tmp_path / "ct"), "--format", "compressed-tensors"]) == 0
    assert "compressed-tensors" in capsys.readouterr().out
    assert _decompress(tmp_path / "ct")[0].sparsity_config.format == SPARSE_BITMASK
    assert cli.main(["export", str(sub), str(tmp_path / "hf")]) == 0  # the default stays the dense folder
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cli.main(["export", str(tmp_path / "ws"), str(tmp_path / "x"), "--format", "compressed-tensors"]) == 2
    assert not (tmp_path / "x").exists()  # not a sub-model: one line on stderr, nothing written


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_preset_same_greedy_tokens(tmp_path):
    sub = extract("smollm2-135m", "python", PruneConfig(0.5, "2:4"), CalibrationSpec(n_samples=4, seq_len=256),
                  tmp_path / "sub").path
    out = export_compressed(sub, tmp_path / "ct")
    _, decompressed = _decompress(out)
    state, _, _ = dense_state(sub)
    assert all(torch.equal(decompressed[k], v) for k, v in state.items())
    model, tokenizer = _load_with_transformers(out)
    ours = load_model(str(sub), dtype="bfloat16", sparse=False)
    assert _greedy(model, tokenizer, 24) == _greedy(ours.model, ours.tokenizer, 24)
