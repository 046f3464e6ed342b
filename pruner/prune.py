"""Sequential, layer-by-layer pruning of a causal LM: the orchestration around `wanda.py`.

Lifecycle of one run (`prune_model`):
  1. capture  — run the model up to its first decoder layer on each calibration batch and keep exactly
                what that layer receives (hidden states and every keyword argument: transformers 5
                passes position_embeddings, attention masks, cache positions …). Nothing per model.
  2. per decoder layer, in order:
       a. observe — hooks on each nn.Linear stream ||X_j||^2 over real tokens (NormAccumulator; linears
                    fed the same tensor share one reduction of it);
       b. mask    — scores from weights and norms, keep-mask per row (wanda.mask_from_scores);
       c. apply   — zero the pruned weights in place;
       d. forward — run the *pruned* layer again: its outputs are the next layer's inputs, so later
                    layers calibrate on what they will really see.
  3. report  — sparsity per layer and in total, timings, peak memory.

Embeddings and lm_head are never touched (they live outside the decoder layers), so tied weights stay tied.
Memory is bounded by one decoder layer's activations over the calibration set, plus the model; with
`offload=True` on an accelerator only the current layer (and the next, coming in; see offload.LayerStream)
is on the device.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import PruneConfig
from .errors import ConfigError
from .progress import CancelFn, ProgressFn, check_cancel, report
from .layers import decoder_layers, prunable_linears
from .offload import LayerStream
from .wanda import NormAccumulator, apply_mask, column_sq_sums, magnitude_scores, mask_from_scores, wanda_scores

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first decoder layer needs to run."""


@dataclass
class LayerInputs:
    """What one decoder layer receives for one calibration batch."""

    hidden: torch.Tensor  # (batch, seq, hidden)
    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None  # (batch, seq) True for real tokens


@dataclass
class PruneReport:
    layers: list[dict] = field(default_factory=list)  # per decoder layer: index, sparsity, seconds
    linear_sparsity: float = 0.0  # zeros / weights over the pruned linear layers
    model_sparsity: float = 0.0  # zeros in pruned layers / all parameters (embeddings included)
    pruned_params: int = 0
    total_params: int = 0
    seconds: float = 0.0
    capture_seconds: float = 0.0
    peak_memory_bytes: int = 0  # the compute device's: the accelerator's, or the process's on the CPU
    peak_host_bytes: int = 0  # the process's resident memory at its highest
    peak_device_bytes: int = 0  # the accelerator's allocations at their highest (0 on the CPU)
    calibration_tokens: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PruneResult:
    masks: dict[str, torch.Tensor]  # weight name (e.g. "model.layers.0.mlp.up_proj.weight") -> keep-mask
    report: PruneReport


@torch.no_grad()
def capture_first_layer_inputs(model, layers: nn.ModuleList, input_ids, attention_mask, batch_size: int) -> list[LayerInputs]:
    captured: list[LayerInputs] = []
    current_mask = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        kwargs.pop("hidden_states", None)
        captured.append(LayerInputs(hidden, tuple(args[1:]), kwargs, current_mask.get("m")))
        raise _StopForward

    device = next(model.parameters()).device
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            am = attention_mask[start:start + batch_size].to(device)
            current_mask["m"] = am.bool() if not bool(am.all()) else None
            with contextlib.suppress(_StopForward):
                model(input_ids=ids, attention_mask=am, use_cache=False)
    finally:
        handle.remove()
    return captured


def _layer_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def prune_model(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: PruneConfig,
    *,
    batch_size: int = 4,
    offload: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    load_layer=None,
    release_layer=None,
) -> PruneResult:
    """Prune every linear layer inside the decoder layers of `model` in place; return the masks.

    input_ids / attention_mask: (n_samples, seq_len) calibration windows (0 in the mask = padding).
    load_layer(index, layer) / release_layer(index, layer, masks): when given (weights on disk, see
    offload.py) each layer is read in before its turn and handed over afterwards; its masks are then
    not kept in the result. On CUDA they run on a worker thread, a layer ahead (offload.LayerStream),
    always in layer order and never on a layer the caller is computing.
    """
    t_start = time.perf_counter()
    model.eval()
    prefix, layers = decoder_layers(model)
    compute_device = next(model.parameters()).device
    if offload and compute_device.type != "cpu":
        raise ConfigError("offload expects the model on the CPU; it moves one layer at a time to the accelerator")
    device = torch.device("cuda") if offload and torch.cuda.is_available() else compute_device
    if offload and device.type == "cuda":
        # only the decoder stack's siblings (embeddings, rotary tables, final norm) and the current
        # layer ever sit on the accelerator
        parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
        for child in parent.children():
            if child is not layers:
                child.to(device)

    use_wanda = config.method == "wanda"
    inputs: list[LayerInputs] = []
    if use_wanda:
        report(progress, "calibrate", 0, 1, "capturing the first layer's inputs")
        inputs = capture_first_layer_inputs(model, layers, input_ids, attention_mask, batch_size)
        report(progress, "calibrate", 1, 1, f"{len(inputs)} batches captured")
    capture_seconds = time.perf_counter() - t_start

    kept_total = 0
    result = PruneReport(capture_seconds=capture_seconds, calibration_tokens=int(attention_mask.sum()))
    stream = LayerStream(layers, device, offload=offload and device.type == "cuda", load_layer=load_layer,
                         release_layer=release_layer)
    try:
        for index, layer in enumerate(layers):
            check_cancel(cancel)
            t_layer = time.perf_counter()
            stream.fetch(index)
            linears = prunable_linears(layer)
            layer_masks = {}
            norms: dict[str, NormAccumulator] = {}
            if use_wanda:
                norms = _observe(layer, linears, inputs, device)
            kept_counts = []
            for name, linear in linears.items():
                held = _host_copy(linear)
                weight = linear.weight if held is None else held.to(_home(linear))
                if use_wanda:
                    scores = wanda_scores(weight, norms[name].sq_norms.to(weight.device))
                else:
                    scores = magnitude_scores(weight)
                keep = mask_from_scores(scores, config.sparsity, config.pattern)
                del scores  # an fp32 copy of the weight: free before the next one
                apply_mask(weight if held is None else held, keep)
                layer_masks[f"{prefix}.{index}.{name}.weight"] = keep
                kept_counts.append(keep.sum())
            total = sum(lin.weight.numel() for lin in linears.values())
            kept = int(torch.stack(kept_counts).sum()) if kept_counts else 0  # the layer's one wait on the device
            if use_wanda and index + 1 < len(layers):
                for item in inputs:  # pruned outputs feed the next layer
                    out = layer(item.hidden.to(device), *item.args, **item.kwargs)
                    item.hidden = _layer_output(out)
            stream.release(index, layer_masks)
            seconds = time.perf_counter() - t_layer
            result.layers.append({"layer": index, "sparsity": 1 - kept / total if total else 0.0, "seconds": round(seconds, 3)})
            result.pruned_params += total - kept
            kept_total += kept
            report(progress, "prune", index + 1, len(layers), f"layer {index + 1}/{len(layers)}: {1 - kept / max(total, 1):.1%} sparse")
            log.debug("layer %d pruned in %.2f s", index, seconds)
    finally:
        stream.close()
    masks = stream.masks

    linear_total = result.pruned_params + kept_total
    result.linear_sparsity = result.pruned_params / linear_total if linear_total else 0.0
    result.total_params = sum(p.numel() for p in model.parameters())  # meta tensors count too
    result.model_sparsity = result.pruned_params / result.total_params
    result.seconds = time.perf_counter() - t_start
    for name, value in peaks(device).items():
        setattr(result, name, value)
    return PruneResult(masks, result)


def _observe(layer, linears: dict[str, nn.Linear], inputs: list[LayerInputs], device) -> dict[str, NormAccumulator]:
    """Run the layer over all captured inputs with one hook per linear accumulating input norms."""
    norms = {name: NormAccumulator(lin.in_features, device=_home(lin)) for name, lin in linears.items()}
    # linears fed the same tensor (q/k/v, gate/up) share one reduction of it
    current: dict = {"mask": None, "x": None, "sums": None}
    handles = []
    try:
        for name, lin in linears.items():
            def hook(module, args, _acc=norms[name]):
                if current["x"] is not args[0]:
                    current["x"], current["sums"] = args[0], column_sq_sums(args[0], current["mask"])
                _acc.add_sums(*current["sums"])
            handles.append(lin.register_forward_pre_hook(hook))
        for item in inputs:
            current["mask"] = item.token_mask
            layer(item.hidden.to(device), *item.args, **item.kwargs)
            current["x"] = current["sums"] = None
    finally:
        for h in handles:  # one owner for every hook handle: always removed
            h.remove()
    return norms


def _host_copy(linear: nn.Linear) -> torch.Tensor | None:
    """The weight accelerate keeps on the host for a linear it offloaded (`--device auto` with the CPU in the
    device map: the module's own weight is a meta placeholder between forwards), else None."""
    hook = getattr(linear, "_hf_hook", None)
    if hook is None or not getattr(hook, "offload", False) or not linear.weight.is_meta:
        return None
    return hook.weights_map["weight"]


def _home(linear: nn.Linear) -> torch.device:
    """Where the linear computes: its weight's device, or the device accelerate runs an offloaded one on."""
    hook = getattr(linear, "_hf_hook", None)
    if linear.weight.is_meta and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return linear.weight.device


def peaks(device) -> dict[str, int]:
    """The report's three peak-memory fields for a run on `device`, as this process stands now."""
    peak = peak_memory_bytes(device)
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    return {"peak_memory_bytes": peak, "peak_host_bytes": peak_memory_bytes("cpu"),
            "peak_device_bytes": peak if on_cuda else 0}


def peak_memory_bytes(device) -> int:
    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def sparsity_of(model) -> dict:
    """Zeros per decoder-layer linear weight, measured on the weights themselves."""
    prefix, layers = decoder_layers(model)
    zeros = total = 0
    for layer in layers:
        for lin in prunable_linears(layer).values():
            zeros += int((lin.weight == 0).sum())
            total += lin.weight.numel()
    return {"linear_sparsity": zeros / total if total else 0.0, "zeros": zeros, "linear_params": total}
