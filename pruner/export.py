"""Export a sub-model for serving engines: a compressed-tensors checkpoint (the format llm-compressor writes
and vLLM reads) with a model card.

compressed-tensors stores each pruned linear weight W (out, in) under its module name NAME (the weight's
name without `.weight`):

- `sparse-24-bitmask` (2:4 sub-models): `NAME.compressed` (out, in/2), the two kept values of every
  block of four, row by row; `NAME.bitmask` uint8 (out, ceil(in/8)), bit j of byte b set when column
  8b+j is kept (numpy's `packbits(..., bitorder="little")`); `NAME.shape` int64 (2, 1).
- `sparse-bitmask` (unstructured and other N:M): `NAME.compressed` (nnz,), the kept values row by row;
  `NAME.bitmask` as above; `NAME.shape` int64 (2,); `NAME.row_offsets` int64 (out,), where each row's
  values start.

`config.json` carries `quantization_config = {quant_method: "compressed-tensors", sparsity_config: {...}}`
naming the format and the pruned modules. The bitmask is the sub-model's own keep-mask, not `W != 0`: a
kept weight that happens to be zero (or -0.0) survives the round trip bit for bit.

The layout follows compressed-tensors 0.13 (the last release with sparse compressors; later releases,
recent vLLM and transformers >= 5 dropped sparse checkpoints): the tests decompress an export with that
library and compare it with the sub-model bit for bit.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from . import paths
from .config import Pattern
from .errors import ModelError
from .loaded import MANIFEST, WEIGHTS
from .storage import dense_state, verify

log = logging.getLogger(__name__)

FORMATS = ("hf", "compressed-tensors")
SPARSE_24 = "sparse-24-bitmask"
SPARSE_BITMASK = "sparse-bitmask"
# the compressed-tensors release whose sparse layout this module writes (recorded in config.json)
LAYOUT_VERSION = "0.13.0"
CARD = "README.md"


# --------------------------------------------------------------------------- pure: tensors


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """uint8 (rows, ceil(cols/8)) with bit j of byte b = keep[:, 8b + j] (LSB first, padding bits 0)."""
    rows, cols = keep.shape
    padded = torch.zeros(rows, -(-cols // 8) * 8, dtype=torch.uint8)
    padded[:, :cols] = keep
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8)
    return (padded.view(rows, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def compress_24(weight: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The `sparse-24-bitmask` tensors of one weight; refuses a mask that is not exactly 2 kept of every 4."""
    rows, cols = weight.shape
    if cols % 4 or not bool((keep.view(rows, -1, 4).sum(-1) == 2).all()):
        raise ModelError(f"a {rows}x{cols} weight is not 2:4 sparse (2 kept in every block of 4): "
                         "export it with --format hf")
    return {
        "compressed": weight[keep].view(rows, cols // 2),  # boolean indexing walks row by row
        "bitmask": pack_bits(keep),
        "shape": torch.tensor([rows, cols], dtype=torch.int64).view(2, 1),
    }


def compress_bitmask(weight: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The `sparse-bitmask` tensors of one weight (any pattern)."""
    counts = keep.sum(-1, dtype=torch.int64)
    return {
        "compressed": weight[keep],
        "bitmask": pack_bits(keep),
        "shape": torch.tensor(list(weight.shape), dtype=torch.int64),
        "row_offsets": torch.cumsum(counts, 0) - counts,
    }


def compression_format(pattern: str) -> str:
    """vLLM runs 2:4 on sparse tensor cores; every other pattern is stored as a plain bitmask."""
    p = Pattern.parse(pattern)
    return SPARSE_24 if (p.n, p.m) == (2, 4) else SPARSE_BITMASK


def quantization_config(fmt: str, pattern: str, global_sparsity: float, modules: list[str]) -> dict:
    """The `quantization_config` entry of config.json for a sparsity-only compressed-tensors checkpoint."""
    return {
        # no `format` or `config_groups`: nothing is quantized, only the sparsity compressor applies
        "quant_method": "compressed-tensors",
        "version": LAYOUT_VERSION,
        "sparsity_config": {
            "format": fmt,
            "global_sparsity": round(float(global_sparsity), 6),
            "sparsity_structure": str(Pattern.parse(pattern)),
            "targets": sorted(modules),  # exact module names: only the pruned linears
            "ignore": [],
        },
        "transform_config": {},
    }


def compress_state(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The whole checkpoint: pruned weights compressed under their module names, the rest as it is."""
    compress = compress_24 if fmt == SPARSE_24 else compress_bitmask
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in masks:
            out[name] = tensor.contiguous()
            continue
        module = name.removesuffix(".weight")
        for key, value in compress(tensor, masks[name]).items():
            out[f"{module}.{key}"] = value.contiguous()
    return out


# --------------------------------------------------------------------------- pure: the card


def model_card(manifest: dict, fmt: str | None) -> str:
    """A README for the exported folder: what it was cut from, for which language, how, and how well."""
    report = manifest.get("report") or {}
    calib = manifest.get("calibration") or {}
    language = manifest.get("language", "?")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [subcoder, pruned, wanda, code, {language}" + (", compressed-tensors]" if fmt else "]"),
        "---",
        "",
        f"# {language} sub-model of {manifest.get('base_model', '?')}",
        "",
        f"A {language} code model cut from **{manifest.get('base_model', '?')}** by subcoder "
        f"{manifest.get('subcoder_version', '')}: {manifest.get('method', '?')} pruning, pattern "
        f"{manifest.get('pattern', '?')}, sparsity {manifest.get('sparsity', '?')}.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {manifest.get('base_model', '?')} (weights sha256 `{str(manifest.get('base_hash', ''))[:16]}`) |",
        f"| language | {language} |",
        f"| method | {manifest.get('method', '?')}, pattern {manifest.get('pattern', '?')}, "
        f"target sparsity {manifest.get('sparsity', '?')} |",
        f"| calibration | {calib.get('description') or calib.get('source', '?')}; "
        f"{calib.get('n_samples', '?')} samples x {calib.get('seq_len', '?')} tokens "
        f"({calib.get('tokens', '?')} tokens), fingerprint `{calib.get('fingerprint', '?')}` |",
    ]
    if "linear_sparsity" in report:
        lines.append(f"| measured sparsity | {100 * report['linear_sparsity']:.2f}% of the pruned linear weights, "
                     f"{100 * report.get('model_sparsity', 0):.2f}% of all parameters |")
    if fmt:
        lines.append(f"| storage | compressed-tensors `{fmt}` (config.json `quantization_config.sparsity_config`) |")
    quality = manifest.get("quality") or manifest.get("evaluation")
    lines += ["", "## Quality", ""]
    if isinstance(quality, dict) and quality:
        lines += ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(quality.items())]
    else:
        lines.append("Not measured when it was extracted. Measure it against its base model with "
                     "`subcoder eval` (perplexity, next-line accuracy, HumanEval-X pass@1).")
    lines += ["", "## Serving", "", "```bash", "vllm serve ./THIS_FOLDER", "```", ""]
    if fmt:
        lines += ["vLLM reads sparse compressed-tensors checkpoints only in releases that still carry sparse "
                  "support (the 2:4 path was removed in 2026; newer releases refuse a `sparsity_config`). "
                  "With a newer vLLM, serve `subcoder export SUB DIR --format hf` (dense, pruned weights "
                  "as zeros) instead.", ""]
    lines.append("`subcoder_manifest.json` beside this card is the sub-model's full manifest.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- orchestration


def export(directory: Path, target: Path, fmt: str = "hf") -> Path:
    """Write a sub-model for other tools: `hf` (dense) or `compressed-tensors`; `target` must not exist."""
    if fmt == "hf":
        from .storage import export_dense

        return export_dense(directory, target)
    if fmt == "compressed-tensors":
        return export_compressed(directory, target)
    raise ModelError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")


def export_compressed(directory: Path, target: Path) -> Path:
    """A compressed-tensors checkpoint: weights, config.json with the sparsity config, tokenizer,
    generation config, model card and the sub-model's manifest, written atomically."""
    from safetensors.torch import save_file

    directory, target = Path(directory), Path(target)
    manifest = verify(directory)
    state, masks, _ = dense_state(directory)
    fmt = compression_format(manifest.get("pattern", "unstructured")) if masks else None
    tensors = compress_state(state, masks, fmt) if fmt else state
    config = json.loads((directory / "config.json").read_text())
    config.pop("quantization_config", None)
    if fmt:
        sparsity = (manifest.get("report") or {}).get("model_sparsity", manifest.get("sparsity", 0.0))
        modules = [name.removesuffix(".weight") for name in masks]
        config["quantization_config"] = quantization_config(fmt, manifest.get("pattern", "unstructured"), sparsity, modules)
    with paths.atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for f in directory.iterdir():  # tokenizer files, generation_config.json, chat template
            if f.is_file() and f.name not in (MANIFEST, "config.json", CARD) and not f.name.endswith(".safetensors"):
                shutil.copy2(f, tmp / f.name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / CARD).write_text(model_card(manifest, fmt))
        (tmp / "subcoder_manifest.json").write_text((directory / MANIFEST).read_text())
    log.info("exported %s as compressed-tensors (%s) to %s", directory, fmt or "no pruned weights", target)
    return target
