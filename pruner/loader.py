"""Loading a causal LM for inference: one call for every kind of name (preset, directory, GGUF file,
hub id, sub-model directory)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError
from .loaded import MANIFEST, LoadedModel, ModelInfo, checkpoint_dtype, detect_fim, parse_dtype
from .presets import resolve_model, weights_hash
from .progress import ProgressFn

def load_model(
    name: str,
    *,
    dtype="auto",
    device: str = "cpu",
    sparse: bool | None = None,
    trust_remote_code: bool = False,
    cache_dir=None,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """Load a base model or a sub-model, ready for inference.

    `sparse`: run a sub-model's pruned layers on the sparse CPU kernel (None = when available).
    """
    directory = resolve_model(name, cache_dir=cache_dir, progress=progress)
    if (directory / MANIFEST).is_file():
        from .storage import load_submodel

        return load_submodel(directory, dtype=dtype, device=device, sparse=sparse, name=name)
    model, tokenizer = load_hf_dir(directory, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    info = ModelInfo(
        name=name,
        path=directory,
        content_hash=weights_hash(directory),
        architecture=model.config.architectures[0] if model.config.architectures else type(model).__name__,
        fim=detect_fim(tokenizer),
        weights_dtype=checkpoint_dtype(directory),
    )
    return LoadedModel(model, tokenizer, info)


def load_hf_dir(directory: Path, *, dtype="auto", device="cpu", trust_remote_code=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # device "auto": accelerate places the layers over the GPUs (and CPU) that fit them; its hooks
    # move each layer's inputs to where the layer lives, so sequential pruning works unchanged.
    placement = {"device_map": "auto"} if device == "auto" else {}
    torch_dtype = parse_dtype(dtype, "cuda" if device == "auto" and _has_cuda() else "cpu" if device == "auto" else device)
    if not list(Path(directory).glob("*.safetensors")):
        raise ModelError(f"{directory} has no safetensors weights (subcoder never loads pickled weights)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **placement
        )
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelError(f"cannot load the model in {directory}: {text[0] if text else type(exc).__name__}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if not placement:
        model.to(device)
    return model, tokenizer


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
