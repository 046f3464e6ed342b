"""Sub-model directories: compact safetensors (packed bitmask + kept values), manifest, checksums.

Layout (format version 1, see docs/ARCHITECTURE.md): each pruned weight W (out, in) is stored as
`NAME.mask` (int32 (out, ceil(in/32)), bit j of word k = column 32k+j kept, LSB first) and
`NAME.values` (kept values row by row). At 50% sparsity in bf16 that is 0.5 * 2 + 1/8 = 1.125 bytes
per weight instead of 2 (0.5625x). With the manifest's `values: int8` (`subcoder prune --values int8`)
the kept values are int8 with one fp32 scale per row in `NAME.scales` (symmetric, round to nearest:
subcoder.pruner.kernels.int8): 0.5 + 1/8 = 0.625 bytes per weight at 50% (0.31x). Everything else is
stored densely under its own name. A manifest without `values` is bf16.

Directories are written atomically (temporary directory, then rename) and every file's sha256 is in
the manifest, checked on load: a truncated or tampered directory is refused, never half-loaded.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from . import __version__, paths
from .errors import CorruptError, ModelError
from .kernels import int8
from .packing import pack_mask, pack_rows, row_offsets, unpack_mask  # noqa: F401  (pack_mask: part of this module's API)
from .loaded import LoadedModel, MANIFEST, ModelInfo, WEIGHTS, checkpoint_dtype, detect_fim, parse_dtype, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# int8 entries carry `.scales` tensors a reader of version 1 would not know: they say 2, so an older
# subcoder refuses them with its "this subcoder reads 1" line instead of misreading them. bf16 entries
# (and every cache key, which ends in -v{FORMAT_VERSION}) stay at 1.
INT8_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, INT8_FORMAT_VERSION)
MASK_SUFFIX = ".mask"
VALUES_SUFFIX = ".values"
SCALES_SUFFIX = ".scales"  # int8 values only: fp32 (out,), one scale per row
PACKED_SUFFIXES = (MASK_SUFFIX, VALUES_SUFFIX, SCALES_SUFFIX)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


# --------------------------------------------------------------------------- packing


def pack_weight(weight: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask words, kept values row by row, in the weight's dtype) for one pruned weight."""
    return pack_rows(weight, keep, dtype=None)


def pack_weight_int8(weight: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask words, int8 kept values row by row, fp32 scales per row) for one pruned weight."""
    words, kept = pack_rows(weight, keep, dtype=None)
    q, scales = int8.quantise_rows(kept, row_offsets(words))
    return words, q, scales


def unpack_weight(words: torch.Tensor, values: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense weight (zeros where pruned) and its keep-mask."""
    keep = unpack_mask(words, shape[1])
    if int(keep.sum()) != values.numel():
        raise CorruptError(f"mask and values disagree ({int(keep.sum())} kept bits, {values.numel()} values)")
    dense = torch.zeros(tuple(shape), dtype=values.dtype)
    dense[keep] = values
    return dense, keep


# --------------------------------------------------------------------------- saving


def encode_tensors(items, masks: dict[str, torch.Tensor], dtype: str | None = None, values: str = "bf16"
                   ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Tensors as stored: pruned weights become `.mask` + `.values` (+ `.scales` for int8 values),
    the rest stays dense.

    `dtype`: the base checkpoint's precision. A bf16 checkpoint pruned in fp32 is stored in bf16 again,
    which is exact (the values came from bf16) and keeps the compact size bound. `values`: "bf16"
    (kept values in that precision) or "int8" (quantised from it, per row).
    """
    int8.check_format(values)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    target = parse_dtype(dtype) if dtype else None
    for name, tensor in items:
        if target is not None and tensor.is_floating_point():
            tensor = tensor.to(target)
        if name in masks and values == "int8":
            words, q, scales = pack_weight_int8(tensor, masks[name])
            tensors.update({name + MASK_SUFFIX: words, name + VALUES_SUFFIX: q, name + SCALES_SUFFIX: scales})
            shapes[name] = list(tensor.shape)
        elif name in masks:
            words, kept = pack_weight(tensor, masks[name])
            tensors[name + MASK_SUFFIX] = words
            tensors[name + VALUES_SUFFIX] = kept
            shapes[name] = list(tensor.shape)
        else:
            tensors[name] = tensor.detach().contiguous().cpu()
    return tensors, shapes


def write_weights(path: Path, tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> None:
    from safetensors.torch import save_file

    # one metadata key: safetensors orders several keys arbitrarily, and equal sub-models should be equal bytes
    meta = json.dumps({"format_version": FORMAT_VERSION, "pruned_shapes": shapes}, sort_keys=True)
    save_file(tensors, str(path), metadata={"subcoder": meta})


def save_submodel(loaded: LoadedModel, masks: dict[str, torch.Tensor], manifest: dict, target: Path,
                  *, shards: Path | None = None) -> dict:
    """Write a sub-model directory atomically and return its full manifest.

    `masks`: weight name -> keep-mask (True = kept). `shards`: a staging folder of weight files already
    written layer by layer (offloaded pruning); their tensors are not written again (only re-encoded
    when they hold bf16 values and the manifest asks for int8). `manifest["values"]`: the value
    format, "bf16" when absent.
    """
    value_format = int8.check_format(manifest.get("values", "bf16"))
    model, tokenizer = loaded.model, loaded.tokenizer
    tied = _tied_names(model)
    from safetensors import safe_open

    staged = sorted(Path(shards).glob("*.safetensors")) if shards else []
    done: set[str] = set()  # weights already written layer by layer
    pruned: set[str] = set()
    for f in staged:  # one read of each staged header: which tensors it holds, which are pruned
        with safe_open(str(f), framework="pt") as fh:
            done.update(_weight_name(k) for k in fh.keys())
            pruned.update(_pruned_shapes(fh.metadata()))
    items = ((n, t) for n, t in model.state_dict().items() if n not in tied and n not in done)
    tensors, shapes = encode_tensors(items, masks, loaded.info.weights_dtype, value_format)
    pruned.update(shapes)
    with paths.atomic_dir(Path(target)) as tmp:
        write_weights(tmp / WEIGHTS, tensors, shapes)
        for f in staged:
            if value_format == "int8":
                _requantise_shard(f, tmp / f.name)
            else:
                shutil.move(str(f), tmp / f.name)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tokenizer.save_pretrained(str(tmp))
        full = {
            "format_version": INT8_FORMAT_VERSION if value_format == "int8" else FORMAT_VERSION,
            "subcoder_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **manifest,
            "values": value_format,
            "pruned_weights": sorted(pruned),
            "weights_files": [WEIGHTS] + [f.name for f in staged],
        }
        full["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
    log.info("saved sub-model to %s", target)
    return full


def _weight_name(key: str) -> str:
    """'a.weight.mask' / '.values' / '.scales' -> 'a.weight'; other keys as they are."""
    for suffix in PACKED_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _requantise_shard(src: Path, dst: Path) -> None:
    """A staged weight file (written layer by layer with bf16 values) written again with int8 values."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        shapes = _pruned_shapes(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    for name in shapes:
        kept = tensors[name + VALUES_SUFFIX]
        if kept.dtype != torch.int8:
            q, scales = int8.quantise_rows(kept, row_offsets(tensors[name + MASK_SUFFIX]))
            tensors[name + VALUES_SUFFIX], tensors[name + SCALES_SUFFIX] = q, scales
    write_weights(dst, tensors, shapes)
    src.unlink()


def _tied_names(model) -> set[str]:
    """Names of parameters that alias another (lm_head tied to the embeddings): stored once."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel():
            tied.add(name)
        else:
            seen[key] = name
    return tied


# --------------------------------------------------------------------------- loading


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptError(f"{directory} is not a sub-model (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptError(f"{path} is not valid JSON: the sub-model is corrupt") from None
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise CorruptError(f"{directory}: sub-model format {manifest.get('format_version')!r}, this subcoder reads "
                           f"{' or '.join(map(str, READABLE_VERSIONS))}")
    if manifest.get("values", "bf16") not in int8.FORMATS:
        raise CorruptError(f"{directory}: kept values {manifest.get('values')!r}, this subcoder reads "
                           f"{' or '.join(int8.FORMATS)}")
    return manifest


def verify(directory: Path) -> dict:
    """Check every file against the manifest's sha256; raise CorruptError naming the first bad one."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = manifest.get("files") or {}
    if WEIGHTS not in files:
        raise CorruptError(f"{directory}: manifest lists no weights")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CorruptError(f"{directory}: {name} is missing")
        if sha256_file(path) != expected:
            raise CorruptError(f"{directory}: {name} does not match its checksum (truncated or modified)")
    return manifest


def _pruned_shapes(meta: dict | None) -> dict[str, list[int]]:
    try:
        return json.loads((meta or {})["subcoder"])["pruned_shapes"]
    except (KeyError, ValueError, TypeError):
        raise CorruptError("weights file lacks subcoder's metadata: not a sub-model written by subcoder") from None


def weight_files(directory: Path) -> list[Path]:
    manifest = read_manifest(directory)
    return [Path(directory) / name for name in manifest.get("weights_files", [WEIGHTS])]


def _read_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    from safetensors import safe_open

    tensors, shapes = {}, {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as fh:
                shapes.update(_pruned_shapes(fh.metadata()))
                tensors.update({k: fh.get_tensor(k) for k in fh.keys()})
        except CorruptError:
            raise
        except Exception as exc:
            raise CorruptError(f"{directory}: cannot read {path.name} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return tensors, shapes


def load_masks(directory: Path) -> dict[str, torch.Tensor]:
    """The keep-masks of a sub-model (bool, out x in), without building the model."""
    return {name: unpack_mask(words, in_features) for name, (words, in_features) in load_mask_words(directory).items()}


def load_mask_words(directory: Path) -> dict[str, tuple[torch.Tensor, int]]:
    """The stored mask words of a sub-model as they are (int32, out x ceil(in / 32), padding bits 0) with each
    weight's input width: an eighth of the bool masks' memory, and what overlap analysis counts."""
    from safetensors import safe_open

    masks = {}
    for path in weight_files(Path(directory)):
        with safe_open(str(path), framework="pt") as fh:
            for name, shape in _pruned_shapes(fh.metadata()).items():
                masks[name] = (fh.get_tensor(name + MASK_SUFFIX), shape[1])
    return masks


def dense_state(directory: Path, *, unpack: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(dense state dict with zeros in pruned places, keep-masks, packed form) of a verified sub-model.

    The packed form is name -> (mask words, values, shape), plus the scales as a fourth entry for
    int8 values; their dense weights are dequantised (q * scale) into the float dtype of the
    sub-model's other weights. `unpack=False` leaves the pruned weights out of the state and the
    masks empty (checked all the same), for a caller that runs them packed."""
    tensors, shapes = _read_tensors(directory)
    state, masks, packed = {}, {}, {}
    for name, tensor in tensors.items():
        if name.endswith(PACKED_SUFFIXES):
            continue
        state[name] = tensor
    dense_dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.bfloat16)
    for name, shape in shapes.items():
        try:
            words, values = tensors[name + MASK_SUFFIX], tensors[name + VALUES_SUFFIX]
        except KeyError:
            raise CorruptError(f"{directory}: {name} is listed as pruned but its mask or values are missing") from None
        offsets = row_offsets(words)
        if int(offsets[-1]) != values.numel():  # checked here too when nothing is unpacked
            raise CorruptError(f"{directory}: {name}: mask and values disagree")
        if values.dtype == torch.int8:
            scales = tensors.get(name + SCALES_SUFFIX)
            if scales is None or scales.numel() != shape[0]:
                raise CorruptError(f"{directory}: {name} has int8 values but no scale per row")
            packed[name] = (words, values, shape, scales)
            if unpack:
                kept = int8.dequantise_rows(values, scales.float(), offsets).to(dense_dtype)
                state[name], masks[name] = unpack_weight(words, kept, shape)
        else:
            packed[name] = (words, values, shape)
            if unpack:
                state[name], masks[name] = unpack_weight(words, values, shape)
    return state, masks, packed


def load_submodel(directory: Path, *, dtype="auto", device="cpu", name=None,
                  packed_only: bool = False) -> tuple[LoadedModel, dict]:
    """An ordinary transformers model with exactly the pruned weights (bit-exact, zeros where pruned;
    int8 values dequantised), and the packed form of each pruned weight (name -> (mask words,
    values, shape[, scales])).

    Whether the packed form then runs on the sparse kernel is the loader's decision
    (subcoder.pruner.loader.load_model), not storage's. When it will (`packed_only`), the pruned
    weights are never unpacked: they stay on the meta device, holding no memory, and the caller must
    swap their layers for packed ones before any forward pass (torch multiplies a CPU input with a
    meta weight without complaint, so nothing else would stop it). For the 1.5B preset's 30% int8
    sub-model that cut the load's peak from 9.8 to 4.9 GB (3.3 GB with the assigned parameters below):
    the dense copies, the bool masks and the model's own dense parameters were each another 1.3-3 GB.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    manifest = verify(directory)
    state, _, packed = dense_state(directory, unpack=not packed_only)
    if manifest.get("values") == "int8":
        log.info("%s stores int8 kept values: dequantised to dense weights here; where the sparse kernel "
                 "runs, it computes from the int8 values directly", directory.name)
    torch_dtype = parse_dtype(dtype, device)
    try:
        config = AutoConfig.from_pretrained(str(directory))
        with no_init_weights():  # every weight is overwritten below: skip the random init
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:
        raise ModelError(f"cannot build the sub-model in {directory}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    # assign: the parameters become the tensors just read, not copies of them (the 1.5B's embeddings
    # alone are 445 MiB); they take the compute dtype first, as a copying load would have made them
    # (an assigned embedding is no longer the head's tensor: the ties are read before, restored after)
    tied = _tied_names(model)
    state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m not in tied and not (packed_only and m in packed)]
    if missing or unexpected:  # a weight left out would keep no_init_weights' garbage: refuse
        raise CorruptError(f"{directory}: weights do not fit the config (missing {missing[:2]}, unexpected {unexpected[:2]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().to(device)
    if packed_only:  # no_init_weights left them uninitialised (untouched pages): give them back
        for weight_name, entry in packed.items():
            module = model.get_submodule(weight_name.rpartition(".")[0])
            module.weight = torch.nn.Parameter(torch.empty(tuple(entry[2]), dtype=module.weight.dtype, device="meta"),
                                               requires_grad=False)
    info = ModelInfo(
        name=str(name or directory),
        path=directory,
        content_hash=manifest.get("base_hash", ""),
        architecture=(config.architectures or [type(model).__name__])[0],
        fim=detect_fim(tokenizer),
        manifest=manifest,
        weights_dtype=_stored_dtype(state, packed) if manifest.get("values") == "int8" else checkpoint_dtype(directory),
    )
    return LoadedModel(model, tokenizer, info), packed


def _stored_dtype(state: dict[str, torch.Tensor], packed: dict) -> str | None:
    """The float dtype of the weights stored densely: an int8 sub-model's first float tensor in the
    file may be a pruned weight's fp32 scales, which checkpoint_dtype would report."""
    return next((str(t.dtype).removeprefix("torch.") for name, t in state.items()
                 if name not in packed and t.is_floating_point()), None)


def is_submodel_weights(directory: Path) -> bool:
    """Whether `directory` holds weights written by subcoder (packed, with its metadata), whatever
    else it holds: a sub-model whose manifest is gone must not load as a plain checkpoint."""
    from safetensors import safe_open

    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as fh:
                if "subcoder" in (fh.metadata() or {}):
                    return True
        except Exception:  # noqa: BLE001 - an unreadable file is the plain loader's error to report
            continue
    return False


def export_dense(directory: Path, target: Path) -> Path:
    """A plain Hugging Face directory (dense weights, zeros kept) that loads anywhere."""
    from safetensors.torch import save_file

    directory, target = Path(directory), Path(target)
    verify(directory)
    state, _, _ = dense_state(directory)
    with paths.atomic_dir(target) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for f in directory.iterdir():
            if f.is_file() and f.name != MANIFEST and not f.name.endswith(".safetensors"):
                shutil.copy2(f, tmp / f.name)
        (tmp / "subcoder_manifest.json").write_text((directory / MANIFEST).read_text())
    return target


def size_report(directory: Path) -> dict:
    """Bytes of the pruned matrices stored compactly vs as dense bf16, and of the whole directory."""
    from safetensors import safe_open

    directory = Path(directory)
    itemsize = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8, "F64": 8, "I8": 1}
    compact = dense = other = 0
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as fh:
            shapes = _pruned_shapes(fh.metadata())
            for key in fh.keys():
                sl = fh.get_slice(key)
                nbytes = itemsize.get(sl.get_dtype(), 4)
                for d in sl.get_shape():
                    nbytes *= d
                if key.endswith(PACKED_SUFFIXES):
                    compact += nbytes
                else:
                    other += nbytes // itemsize.get(sl.get_dtype(), 4) * 2  # as bf16
            dense += sum(shape[0] * shape[1] * 2 for shape in shapes.values())
    total = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    return {
        "pruned_compact_bytes": compact,
        "pruned_dense_bf16_bytes": dense,
        "pruned_ratio": compact / dense if dense else 1.0,
        "directory_bytes": total,
        "dense_model_bf16_bytes": dense + other,
        "directory_ratio": total / (dense + other) if dense + other else 1.0,
    }
