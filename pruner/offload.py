"""Pruning with the weights on disk: models larger than memory.

The model is built without initialising its weights (the allocator hands out pages it never
touches, so they cost no memory), the embeddings and final norm are read in, and each decoder layer
is read from the base model's safetensors for its turn, pruned, written to its own packed weight file
and freed again. Peak memory is then about one decoder layer, the embeddings and the calibration
activations, whatever the depth of the model.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

from . import paths
from .loaded import LoadedModel, ModelInfo, checkpoint_dtype, detect_fim, parse_dtype
from .presets import weights_hash


class DiskOffload:
    """The weights of one base model directory, served layer by layer to `prune.prune_model`.

    Lifecycle: `build()` (the model without its decoder layers' weights) -> for each layer,
    `load_layer` then `release_layer` (passed to `prune_model` as its hooks; the pruned layer lands
    in `staging/layer-NNNN.safetensors`) -> `storage.save_submodel(..., shards=staging)` -> `cleanup()`,
    always, also after an error or cancellation.
    """

    def __init__(self, directory: Path, name: str, dtype="bfloat16", staging_parent: Path | None = None):
        self.directory = Path(directory)
        self.name = name
        self.dtype = parse_dtype(dtype)
        self.weights_dtype = checkpoint_dtype(self.directory)
        self.index = self._index()
        parent = paths.ensure_writable(Path(staging_parent or paths.submodels_dir()))
        self.staging = Path(tempfile.mkdtemp(prefix=".offload-", dir=parent))

    def _index(self) -> dict[str, Path]:
        from safetensors import safe_open

        files = sorted(self.directory.glob("*.safetensors"))
        index = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                index.update({k: f for k in fh.keys()})
        return index

    def _read(self, names) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            if n in self.index:
                by_file.setdefault(self.index[n], []).append(n)
        out = {}
        for f, keys in by_file.items():
            with safe_open(str(f), framework="pt") as fh:
                for k in keys:
                    tensor = fh.get_tensor(k)
                    out[k] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
        return out

    def build(self) -> LoadedModel:
        """The model with everything but the decoder layers' weights read in."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.initialization import no_init_weights

        from .prune import decoder_layers

        config = AutoConfig.from_pretrained(str(self.directory))
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
        self.prefix, layers = decoder_layers(model)
        self.layer_pattern = re.compile(rf"^{re.escape(self.prefix)}\.(\d+)\.")
        outside = [n for n in model.state_dict() if not self.layer_pattern.match(n)]
        model.load_state_dict(self._read(outside), strict=False)
        tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        info = ModelInfo(self.name, self.directory, weights_hash(self.directory),
                         (config.architectures or [type(model).__name__])[0], detect_fim(tokenizer),
                         weights_dtype=self.weights_dtype)
        return LoadedModel(model, tokenizer, info)

    def load_layer(self, index: int, layer: torch.nn.Module) -> None:
        prefix = f"{self.prefix}.{index}."
        names = [prefix + n for n in layer.state_dict()]
        state = {k[len(prefix):]: v for k, v in self._read(names).items()}
        layer.to_empty(device="cpu")  # a freed layer comes back as fresh storage
        layer.load_state_dict(state, strict=True)

    def release_layer(self, index: int, layer: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
        """Write the pruned layer to its own weight file, then give its memory back."""
        from .storage import encode_tensors, write_weights

        prefix = f"{self.prefix}.{index}."
        items = [(prefix + n, t) for n, t in layer.state_dict().items()]
        tensors, shapes = encode_tensors(items, masks, self.weights_dtype)
        write_weights(self.staging / f"layer-{index:04d}.safetensors", tensors, shapes)
        layer.to("meta")

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
