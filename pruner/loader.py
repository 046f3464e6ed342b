"""Loading a causal LM for inference: one call for every kind of name (preset, directory, GGUF file,
hub id, sub-model directory), and the one place that decides whether a model runs on the CPU kernel:
a sub-model's pruned layers on the sparse kernel, a dense model's linears on its dense bf16 matvec."""

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
    on the kernel when it is available here). A dense model's linears go on the kernel's dense bf16
    matvec (`options.dense_kernel`) unless `sparse` is False or the kernel is off: pruning loads with
    sparse=False, because it hooks torch's nn.Linear. `options`: None reads EngineOptions from the
    environment, once, here.
    """
    options = EngineOptions.from_env() if options is None else options
    directory = resolve_model(name, cache_dir=cache_dir, progress=progress)
    if (directory / MANIFEST).is_file():
        from .storage import load_submodel

        wanted = kernel_decision(sparse, options.sparse_kernel)
        # where the kernel will take the pruned layers, they are never unpacked to dense weights
        packed_only = wanted is not False and str(device) == "cpu" and kernels_run()
        loaded, packed = load_submodel(directory, dtype=dtype, device=device, name=name, packed_only=packed_only)
        if wanted is not False:
            _run_on_kernel(loaded, packed, device=device, required=wanted is True, head=options.dense_kernel)
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
    loaded = LoadedModel(model, tokenizer, info)
    if options.dense_kernel and kernel_decision(sparse, options.sparse_kernel) is not False:
        _dense_on_kernel(loaded, device=device, values=options.dense_values)
    return loaded


def kernels_run() -> bool:
    """Whether the CPU kernel runs here (it is built on first use)."""
    from . import kernels

    return kernels.kernel_available()[0]


def kernel_decision(sparse: bool | None, option: bool) -> bool | None:
    """True: the kernel is required; False: not used; None: used when available. An explicit
    `sparse` wins; otherwise the option either turns the kernel off or leaves it to availability."""
    if sparse is not None:
        return bool(sparse)
    return None if option else False


def _run_on_kernel(loaded: LoadedModel, packed: dict, *, device, required: bool, head: bool = True) -> None:
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
    if head and _head_on_kernel(loaded, _fp32_on_kernel()):  # an fp32 head (AVX2), as a dense model's
        log.info("dense kernel: the fp32 lm_head of %s on the bf16 matvec (exact)", loaded.info.name)


def _dense_on_kernel(loaded: LoadedModel, *, device, values: str = "bf16") -> None:
    """Put a dense model's linears (decoder layers and lm_head) on the kernel's dense matvec: the fused
    decode step then runs them as it runs a sub-model's (kind "dense bf16"), and the greedy head screens
    lm_head as it does there, so a dense model gets the same engine. bf16 weights are shared with the
    wrappers (no copy; a tied lm_head stays tied); prefills of 8+ tokens still multiply with torch (on
    AVX2, in fp32 from row chunks of the bf16 weight). fp32 weights that are exactly bf16 (a bf16
    checkpoint computed in fp32, as `--dtype auto` does on CPUs without native bf16) go on the kernel as
    bf16 where its AVX2 path runs, which multiplies in fp32: the same products, half the bytes per token
    (`_bf16_where_exact`). Left as they are where the kernel cannot run. `values` int8 quantises the
    decoder linears per row (the int8 dense baseline); lm_head stays bf16 and the greedy head screens
    it as always."""
    import torch
    from torch import nn

    from . import kernels

    if str(device) != "cpu":
        if values == "int8":
            _round_through_int8(loaded)
        return
    head = loaded.model.get_output_embeddings()
    targets = [(module, child_name, child) for module in loaded.model.modules()
               for child_name, child in module.named_children()
               if type(child) is nn.Linear and child is not head
               and child.weight.dtype in (torch.bfloat16, torch.float32) and child.weight.is_contiguous()]
    fp32_ok = _fp32_on_kernel()
    if all(child.weight.dtype == torch.float32 for _, _, child in targets) and not fp32_ok:
        return  # fp32 weights and no AVX2 path to take them: torch's fp32 BLAS, and no kernel to build
    ok, reason = kernels.kernel_available()
    if not ok:
        log.info("dense kernel off: %s; the model's linears stay torch's", reason)
        return
    n = 0
    for module, child_name, child in targets:
        weight = _bf16_where_exact(child.weight, fp32_ok)
        if weight is None:
            continue  # fp32 values bf16 would round: torch's fp32 layer keeps them
        if weight is not child.weight:
            child.weight = weight  # the fp32 copy goes: half the bytes
        setattr(module, child_name, kernels.dense_kernel_layer(child, values))
        n += 1
    n += _head_on_kernel(loaded, fp32_ok)
    log.info("dense kernel: %d linears of %s on the %s matvec%s", n, loaded.info.name, values,
             " (lm_head bf16)" if values != "bf16" else "")


def _fp32_on_kernel() -> bool:
    """Whether fp32 layers with bf16-exact weights go on the kernel: where it runs its AVX2 path, whose
    input stays fp32 (the AVX-512 path rounds its input to bf16, which would change an fp32 model's numbers)."""
    from .kernels.native import active_isa

    return active_isa() == "avx2"


def _bf16_where_exact(weight, fp32_ok: bool):
    """`weight` itself when bf16; an fp32 weight as a bf16 Parameter when `fp32_ok` (`_fp32_on_kernel`) and
    every value is exactly a bf16 (checked in row chunks, so no second fp32 copy of a large matrix); else None."""
    import torch
    from torch import nn

    if weight.dtype == torch.bfloat16:
        return weight
    if weight.dtype != torch.float32 or not fp32_ok:
        return None
    w = weight.detach()
    half = w.to(torch.bfloat16)
    for r0 in range(0, w.shape[0], 4096):
        if not torch.equal(half[r0:r0 + 4096].float(), w[r0:r0 + 4096]):
            return None
    return nn.Parameter(half, requires_grad=False)


def _head_on_kernel(loaded: LoadedModel, fp32_ok: bool) -> int:
    """A plain lm_head on the kernel's bf16 matvec (1 if it went, else 0), for dense models and sub-models
    alike (sparsify wraps bf16 heads itself): a bf16 weight is shared (a tied head stays tied); an fp32 one
    that is exactly bf16 goes as a bf16 copy. Then the fp32 input embedding, if exactly bf16, is read from
    bf16 too (`_embedding_as_bf16`)."""
    from torch import nn

    from . import kernels

    model = loaded.model
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear or not head.weight.is_contiguous():
        return 0
    weight = _bf16_where_exact(head.weight, fp32_ok)
    if weight is None:
        return 0
    _embedding_as_bf16(loaded, fp32_ok, head_weight=head.weight, head_copy=weight)
    model.set_output_embeddings(kernels.DenseBF16Linear(weight, head.bias))
    return 1


def _embedding_as_bf16(loaded: LoadedModel, fp32_ok: bool, *, head_weight, head_copy) -> None:
    """An fp32 input embedding whose values are all bf16 (the fp32 path of a bf16 checkpoint) keeps them as
    bf16 and widens the rows it looks up (`BF16Embedding`, exact): half its bytes (260 MiB for the 0.5B
    preset, 445 MiB for the 1.5B). Tied to the head (its weight is `head_weight`), it reads the head's bf16
    copy `head_copy`, so the pair stays one tensor."""
    import torch
    from torch import nn

    from . import kernels

    embedding = loaded.model.get_input_embeddings()
    if type(embedding) is not nn.Embedding or embedding.weight.dtype != torch.float32:
        return
    old = embedding.weight
    tied = old is head_weight
    weight = head_copy if tied else _bf16_where_exact(old, fp32_ok)
    if weight is None:
        return
    loaded.model.set_input_embeddings(kernels.BF16Embedding(weight, old.dtype, embedding.padding_idx))
    log.info("input embedding of %s read from bf16 (exact): %.0f MiB of fp32 freed%s", loaded.info.name,
             old.numel() * old.element_size() / 2**20, ", tied to lm_head's copy" if tied else "")


def _round_through_int8(loaded: LoadedModel) -> None:
    """Where the kernel cannot run (a GPU evaluating quality), the int8 dense baseline's numbers: each decoder
    linear's weight replaced by its per-row int8 quantisation, dequantised (lm_head stays as it is, as on the
    kernel). Same weights as DenseInt8Linear holds; only the arithmetic differs (torch's, not the kernel's)."""
    import torch
    from torch import nn

    from .kernels import int8

    head = loaded.model.get_output_embeddings()
    n = 0
    with torch.no_grad():
        for module in loaded.model.modules():
            if type(module) is nn.Linear and module is not head:
                q, scales = int8.quantise_dense(module.weight.float())
                module.weight.copy_(int8.dequantise_dense(q, scales).to(module.weight.dtype))
                n += 1
    log.info("int8 values: %d linears of %s rounded through per-row int8 (no kernel on this device)", n,
             loaded.info.name)


def load_hf_dir(directory: Path, *, dtype="auto", device="cpu", trust_remote_code=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .storage import is_submodel_weights

    # device "auto": accelerate places the layers over the GPUs (and CPU) that fit them; its hooks
    # move each layer's inputs to where the layer lives; layers it leaves on the CPU (meta placeholders between
    # forwards) are handled in prune.py and extract.py.
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
