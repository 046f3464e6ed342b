"""Extract a language sub-model: load → calibrate → prune → store. The one call the CLI and the server make."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import paths
from .calibration import CalibrationSet, CalibrationSpec, build_calibration, check_language
from .config import VALUE_FORMATS, PruneConfig
from .errors import ConfigError, CorruptError
from .loaded import LoadedModel, resolve_dtype
from .loader import load_model
from .presets import resolve_model, weights_hash
from .progress import CancelFn, ProgressFn, check_cancel, report
from .prune import PruneReport, PruneResult, peaks, prune_model
from .storage import FORMAT_VERSION, load_masks, save_submodel, size_report, verify

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    path: Path
    manifest: dict
    report: PruneReport
    sizes: dict
    cached: bool = False  # an intact directory with the same key was reused


def cache_key(base_hash: str, language: str, config: PruneConfig, calibration_fingerprint: str,
              compute_dtype: str = "bfloat16") -> str:
    """Names everything that changes the weights, so equal keys mean equal sub-models.

    The compute dtype is part of it: activations, and so a few mask entries, differ between fp32 and bf16.
    """
    short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(compute_dtype, compute_dtype)
    return f"{language}-{config.slug()}-{short}-{base_hash[:12]}-{calibration_fingerprint}-v{FORMAT_VERSION}"


def planned_key(model: str, language: str, config: PruneConfig, calibration: CalibrationSpec | None = None,
                *, dtype="auto", device: str = "cpu", cache_dir=None, progress: ProgressFn | None = None) -> str:
    """The cache key `extract` would give these inputs, without loading the weights (a tokenizer load and
    the calibration windows' tokenization: about a second). Lets a caller look in the cache first."""
    from transformers import AutoTokenizer

    calibration = calibration or CalibrationSpec()
    check_language(language, allow_general=calibration.source == "corpus")
    directory = resolve_model(model, cache_dir=cache_dir, progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as load_model does: padding ids enter the fingerprint
    calib = build_calibration(tokenizer, language, calibration)
    return cache_key(weights_hash(directory), language, config, calib.fingerprint, resolve_dtype(dtype, device))


def _reusable(target: Path, key: str) -> ExtractResult | None:
    """The sub-model already at `target`, when it is intact and was built from the same inputs."""
    if not (target / "manifest.json").is_file():
        return None
    try:
        manifest = verify(target)
    except CorruptError as exc:
        log.warning("rebuilding: %s", exc)
        return None
    if manifest.get("cache_key") != key:
        return None
    report = PruneReport(**{k: v for k, v in manifest.get("report", {}).items() if k in PruneReport.__dataclass_fields__})
    return ExtractResult(target, manifest, report, size_report(target), cached=True)


def extract(
    model: str | LoadedModel,
    language: str,
    config: PruneConfig,
    calibration: CalibrationSpec | None = None,
    out_dir: Path | None = None,
    *,
    dtype="auto",
    device: str = "cpu",
    offload: bool = False,
    batch_size: int = 4,
    cache_dir=None,
    force: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> ExtractResult:
    """Build one sub-model and write it atomically to `out_dir` (default: the cache, by key).

    `model` may be a name (loaded here) or an already loaded base model, which is pruned in place.
    An existing, intact directory with the same cache key is reused unless `force`.
    """
    calibration = calibration or CalibrationSpec()
    check_language(language, allow_general=calibration.source == "corpus")  # before any slow work
    timings = {}
    t0 = time.perf_counter()
    disk = None
    if offload:
        if isinstance(model, LoadedModel):
            raise ConfigError("offload loads the model itself: pass its name, not a loaded model")
        from .offload import DiskOffload

        disk = DiskOffload(resolve_model(model, cache_dir=cache_dir, progress=progress), str(model), dtype,
                           staging_parent=Path(out_dir).parent if out_dir else paths.submodels_dir(cache_dir))
        loaded = disk.build()
    else:
        loaded = model if isinstance(model, LoadedModel) else load_model(
            model, dtype=dtype, device=device, sparse=False, cache_dir=cache_dir, progress=progress)
    if loaded.info.is_submodel:
        raise ConfigError(f"{loaded.info.name} is already a sub-model; prune its base model instead")
    timings["load_s"] = round(time.perf_counter() - t0, 2)
    check_cancel(cancel)

    t1 = time.perf_counter()
    calib: CalibrationSet = build_calibration(loaded.tokenizer, language, calibration)
    timings["calibration_set_s"] = round(time.perf_counter() - t1, 2)
    log.info("calibration: %s (fingerprint %s)", calib.description, calib.fingerprint)
    compute_dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    key = cache_key(loaded.info.content_hash, language, config, calib.fingerprint, compute_dtype)
    target = Path(out_dir) if out_dir else paths.submodels_dir(cache_dir) / key
    if not force and (existing := _reusable(target, key)) is not None:
        log.info("sub-model %s is cached at %s", key, target)
        return existing

    sibling = None if offload or force else _same_masks_cached(loaded, language, config, calib, compute_dtype,
                                                               (target.parent, paths.submodels_dir(cache_dir)))
    try:
        if sibling is not None:  # only the value format differs: its masks, no calibration pass
            result = _reuse_masks(loaded, sibling, progress)
            timings["prune_s"] = 0.0
        else:
            result = prune_model(loaded.model, calib.input_ids, calib.attention_mask, config,
                                 batch_size=batch_size, offload=offload and device != "cpu", progress=progress,
                                 cancel=cancel, load_layer=disk.load_layer if disk else None,
                                 release_layer=disk.release_layer if disk else None)
            timings["prune_s"] = round(result.report.seconds, 2)
        check_cancel(cancel)
        _gather_offloaded(loaded.model)
        manifest = _write(loaded, result, language, config, calibration, calib, key, timings, target, progress,
                          shards=disk.staging if disk else None, masks_from=sibling.path.name if sibling else None)
    finally:
        if disk:
            disk.cleanup()
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    manifest["timings"] = timings
    log.info("extracted %s sub-model in %.1f s: %.1f%% of linear weights pruned", language, timings["total_s"],
             100 * result.report.linear_sparsity)
    return ExtractResult(target, manifest, result.report, size_report(target))


def _same_masks_cached(loaded, language, config, calib, compute_dtype, places) -> ExtractResult | None:
    """An intact sub-model of the same base, language, calibration, compute dtype and shape whose kept values
    are stored in another format, under its cache key in one of `places` (beside the target, as the server's
    cache keeps them, or in the library's cache). The value format is storage only (pruning never reads it),
    so its masks are the masks this run would compute: switching `values` costs a save, not a calibration
    pass (a 1.5B model's takes about half an hour on a 2-core CPU)."""
    for values in VALUE_FORMATS:
        if values == config.values:
            continue
        key = cache_key(loaded.info.content_hash, language, replace(config, values=values), calib.fingerprint,
                        compute_dtype)
        for place in dict.fromkeys(Path(p) for p in places):
            if (found := _reusable(place / key, key)) is not None:
                return found
    return None


def _reuse_masks(loaded, sibling: ExtractResult, progress) -> PruneResult:
    """Prune the loaded base model with a cached sub-model's masks: the same zeros in the same weights that
    pruning would leave (Wanda never changes a kept weight), and the sparsities pruning reported then."""
    from .wanda import apply_mask

    report(progress, "prune", 0, 1, f"reusing the masks of {sibling.path.name}")
    masks = load_masks(sibling.path)
    params = dict(loaded.model.named_parameters())
    if not set(masks) <= set(params):
        raise CorruptError(f"{sibling.path}: its masks name weights this model lacks")
    for name, keep in masks.items():
        apply_mask(params[name], keep)
    # the sparsities are the masks'; the time and memory are this run's
    device = next(loaded.model.parameters()).device
    pruned = replace(sibling.report, seconds=0.0, **peaks(device))
    report(progress, "prune", 1, 1, "masks reused")
    log.info("masks reused from %s: only the value format differs", sibling.path.name)
    return PruneResult(masks, pruned)


def _gather_offloaded(model) -> None:
    """Put back the weights accelerate holds on the host for modules it offloaded (`device="auto"` when the model
    does not fit the accelerators): the module's own tensors are meta placeholders there, and saving reads them.
    The hooks stay, so the model still runs as placed; they read the same (pruned) host tensors."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is None or not getattr(hook, "offload", False) or getattr(hook, "weights_map", None) is None:
            continue
        for name, param in module._parameters.items():
            if param is not None and param.is_meta:
                module._parameters[name] = torch.nn.Parameter(hook.weights_map[name], requires_grad=False)
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta and name in hook.weights_map:
                module._buffers[name] = hook.weights_map[name]


def _write(loaded, result, language, config, calibration, calib, key, timings, target, progress, shards,
           masks_from: str | None = None) -> dict:
    t2 = time.perf_counter()
    report(progress, "save", 0, 1, f"writing {target}")
    manifest = {
        "base_model": loaded.info.name,
        "base_hash": loaded.info.content_hash,
        "architecture": loaded.info.architecture,
        "language": language,
        "method": config.method,
        "pattern": str(config.pattern),
        "sparsity": config.sparsity,
        "values": config.values,
        "calibration": {"fingerprint": calib.fingerprint, "description": calib.description,
                        "source": calibration.source, "n_samples": calibration.n_samples,
                        "seq_len": calibration.seq_len, "seed": calibration.seed, "tokens": calib.tokens},
        "cache_key": key,
        "compute_dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "report": result.report.to_dict(),
        "timings": timings,
        **({"masks_from": masks_from} if masks_from else {}),  # the cached sub-model whose masks these are
    }
    # the save time is known only once the manifest is written: the returned manifest carries it
    manifest = save_submodel(loaded, result.masks, manifest, target, shards=shards)
    timings["save_s"] = round(time.perf_counter() - t2, 2)
    report(progress, "save", 1, 1, "saved")
    return manifest
