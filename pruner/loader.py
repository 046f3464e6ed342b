"""Loading a causal LM for inference: one call for every kind of name (preset, directory, GGUF file,
hub id, sub-model directory), and the one place that decides whether a sub-model's pruned layers run
on the sparse CPU kernel."""

from __future__ import annotations

import logging
from pathlib import Path

from .engine.options import EngineOptions
from .errors import ModelError
from .loaded import MANIFEST, LoadedModel, ModelInfo, checkpoint_dtype, detect_fim, parse_dtype
from .presets import resolve_model, weights_hash
from .progress import ProgressFn

log = logging.getLogger(__name__)


def load_model(
    name: str,
    *,
    dtype="auto",
    device: str = "cpu",
    sparse: bool | None = None,
    options: EngineOptions | None = None,
    trust_remote_code: bool = False,
    cache_dir=None,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """Load a base model or a sub-model, ready for inference.

    `sparse` (sub-models): True runs the pruned layers on the sparse CPU kernel or raises ModelError
    saying why it cannot; False keeps them dense; None leaves it to `options.sparse_kernel` (then:
    on the kernel when it is available here). `options`: None reads EngineOptions from the
    environment, once, here.
    """
    options = EngineOptions.from_env() if options is None else options
    directory = resolve_model(name, cache_dir=cache_dir, progress=progress)
    if (directory / MANIFEST).is_file():
        from .storage import load_submodel

        loaded, packed = load_submodel(directory, dtype=dtype, device=device, name=name)
        wanted = kernel_decision(sparse, options.sparse_kernel)
        if wanted is not False:
            _run_on_kernel(loaded, packed, device=device, required=wanted is True)
        return loaded
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


def kernel_decision(sparse: bool | None, option: bool) -> bool | None:
    """True: the kernel is required; False: not used; None: used when available. An explicit
    `sparse` wins; otherwise the option either turns the kernel off or leaves it to availability."""
    if sparse is not None:
        return bool(sparse)
    return None if option else False


def _run_on_kernel(loaded: LoadedModel, packed: dict, *, device, required: bool) -> None:
    """Swap the pruned linears for the sparse kernel's layers; where it cannot run, one log line
    (or, when `required`, a ModelError naming the reason)."""
    from . import kernels

    if str(device) != "cpu":
        reason = f"it runs on the CPU, the model is on {device}"
        ok = False
    else:
        ok, reason = kernels.kernel_available()
    if not ok:
        if required:
            raise ModelError(f"cannot run {loaded.info.name} on the sparse kernel: {reason}")
        log.info("sparse kernel off: %s; pruned layers run dense", reason)
        return
    kernels.sparsify(loaded.model, packed)
    loaded.info.sparse_kernel = True


def load_hf_dir(directory: Path, *, dtype="auto", device="cpu", trust_remote_code=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .storage import is_submodel_weights

    # device "auto": accelerate places the layers over the GPUs (and CPU) that fit them; its hooks
    # move each layer's inputs to where the layer lives, so sequential pruning works unchanged.
    placement = {"device_map": "auto"} if device == "auto" else {}
    torch_dtype = parse_dtype(dtype, "cuda" if device == "auto" and _has_cuda() else "cpu" if device == "auto" else device)
    if not list(Path(directory).glob("*.safetensors")):
        raise ModelError(f"{directory} has no safetensors weights (subcoder never loads pickled weights)")
    if is_submodel_weights(directory):  # transformers would fill every pruned weight with random values
        raise ModelError(f"{directory} holds a subcoder sub-model without its {MANIFEST}: rebuild it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        model, loading = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            output_loading_info=True, **placement,
        )
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelError(f"cannot load the model in {directory}: {text[0] if text else type(exc).__name__}") from None
    missing = sorted(loading.get("missing_keys") or ())
    if missing:  # transformers only warns, and the model would answer with random weights there
        more = f" and {len(missing) - 2} more" if len(missing) > 2 else ""
        raise ModelError(f"{directory}: weights missing from the checkpoint: {', '.join(missing[:2])}{more}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if not placement:
        model.to(device)
    return model, tokenizer


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
