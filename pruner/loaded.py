"""What a loaded model is, and what can be read off a checkpoint without loading it.

`LoadedModel(model, tokenizer, info)` is what every loader returns (presets, directories, GGUF files,
hub ids, sub-models); the helpers here read dtypes, fill-in-the-middle tokens and digests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .cpu import native_bf16
from .errors import ConfigError

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class FimTokens:
    prefix: str
    suffix: str
    middle: str


@dataclass
class ModelInfo:
    name: str  # what the user asked for
    path: Path  # local directory the weights were read from
    content_hash: str  # sha256 of the base weights: keys caches
    architecture: str
    fim: FimTokens | None
    manifest: dict = field(default_factory=dict)  # a sub-model's manifest; {} for base models
    sparse_kernel: bool = False  # pruned layers run on the sparse CPU kernel
    weights_dtype: str | None = None  # how the checkpoint stores its weights: sub-models keep that precision

    @property
    def is_submodel(self) -> bool:
        return bool(self.manifest)


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel
    tokenizer: object
    info: ModelInfo


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def detect_fim(tokenizer) -> FimTokens | None:
    """Fill-in-the-middle tokens, when the vocabulary has them (Qwen2.5-Coder, StarCoder families)."""
    vocab = tokenizer.get_vocab()
    for prefix, suffix, middle in (
        ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
        ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ):
        if prefix in vocab and suffix in vocab and middle in vocab:
            return FimTokens(prefix, suffix, middle)
    return None


def resolve_dtype(dtype="auto", device: str = "cpu") -> str:
    """`auto` -> bfloat16 on accelerators and on CPUs with native bf16, float32 elsewhere."""
    if dtype in (None, "auto"):
        return "bfloat16" if str(device) != "cpu" or native_bf16() else "float32"
    return dtype


def parse_dtype(dtype, device: str = "cpu"):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    dtype = resolve_dtype(dtype, device)
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"dtype must be auto, bfloat16 or float32, not {dtype!r}")
    return table[dtype]


def checkpoint_dtype(directory: Path) -> str | None:
    """The floating dtype the weights are stored in (safetensors header), e.g. 'bfloat16'."""
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(min(size, 1 << 24)))
        except (OSError, ValueError):
            return None
        for key, entry in header.items():
            if key != "__metadata__" and entry.get("dtype") in names and not key.endswith((".mask", ".scales")):
                return names[entry["dtype"]]
    return None
