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
from concurrent.futures import Future, ThreadPoolExecutor
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

        from .layers import decoder_layers

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


class LayerStream:
    """Each decoder layer's trip for `prune.prune_model`: read in (from disk, `load_layer`), onto the accelerator
    (`offload`), and back with its masks (`release_layer`, or kept in `masks`).

    On CUDA one worker thread does the trips a layer ahead of the work on a side stream: the next layer is
    read and copied in while the current one computes, and the finished one's weights and masks are copied
    out while the next computes. So the accelerator holds the current layer, the next one and the one going
    out at most, and the copies cost no time as long as a layer's compute outlasts them. Elsewhere every
    trip runs in order, on the calling thread.
    """

    def __init__(self, layers, device: torch.device, *, offload: bool, load_layer=None, release_layer=None):
        self.layers, self.device, self.offload = layers, device, offload
        self.load_layer, self.release_layer = load_layer, release_layer
        self.masks: dict[str, torch.Tensor] = {}
        self.overlap = device.type == "cuda"
        self._moved: dict[int, list] = {}  # index -> [(module, kind, name, host tensor, device tensor)]
        self._fetches: dict[int, Future] = {}
        self._jobs: list[Future] = []
        if self.overlap:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="subcoder-layers")
            self._stream = torch.cuda.Stream(device)

    def fetch(self, index: int) -> None:
        """Layer `index` ready on the compute device; the next one starts its trip."""
        if not self.overlap:
            if self.load_layer is not None:
                self.load_layer(index, self.layers[index])
            return
        pending = self._fetches.pop(index, None) or self._pool.submit(self._bring_in, index)
        moved, ready = pending.result()
        if index + 1 < len(self.layers):
            self._fetches[index + 1] = self._pool.submit(self._bring_in, index + 1)
        if moved is None:
            return
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(ready)
        for module, kind, name, _, on_device in moved:
            on_device.record_stream(compute)  # allocated on the side stream, used on this one
            _set(module, kind, name, on_device)
        self._moved[index] = moved

    def release(self, index: int, masks: dict[str, torch.Tensor]) -> None:
        """Layer `index` is pruned: weights back to the host, masks to the CPU, then handed over."""
        layer = self.layers[index]
        if not self.overlap:
            self._hand_over(index, layer, {k: v.cpu() for k, v in masks.items()})
            return
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        moved = self._moved.pop(index, None)
        for module, kind, name, on_host, _ in moved or ():
            _set(module, kind, name, on_host)  # filled by the job below before anyone reads it
        self._jobs.append(self._pool.submit(self._send_out, index, layer, masks, moved, done))

    def close(self) -> None:
        """Wait for every trip under way (their errors surface here) and stop the worker."""
        if not self.overlap:
            return
        try:
            for job in self._jobs + list(self._fetches.values()):
                job.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _bring_in(self, index: int):
        layer = self.layers[index]
        if self.load_layer is not None:
            self.load_layer(index, layer)
        if not self.offload:
            return None, None
        moved = []
        with torch.cuda.stream(self._stream):
            for module in layer.modules():
                for kind, tensors in (("param", module._parameters), ("buffer", module._buffers)):
                    for name, t in tensors.items():
                        if t is not None:
                            on_device = torch.empty_like(t, device=self.device)
                            on_device.copy_(_pinned(t.data), non_blocking=True)
                            moved.append((module, kind, name, t.data, on_device))
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return moved, ready

    def _send_out(self, index, layer, masks, moved, done) -> None:
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(done)
            # a mask on another GPU (device "auto" over several) is copied on that GPU's stream: wait for it there
            staged_masks = {k: _pinned_like(v).copy_(v, non_blocking=v.device == self._stream.device)
                            for k, v in masks.items()}
            weights = [(on_host, _pinned_like(on_device).copy_(on_device, non_blocking=True))
                       for _, kind, _, on_host, on_device in moved or () if kind == "param"]  # pruning changes weights only
            self._stream.synchronize()
        on_cpu = {k: torch.empty(v.shape, dtype=v.dtype).copy_(v) for k, v in staged_masks.items()}
        for on_host, staged in weights:
            on_host.copy_(staged)
        self._hand_over(index, layer, on_cpu)

    def _hand_over(self, index, layer, masks) -> None:
        if self.release_layer is not None:
            self.release_layer(index, layer, masks)
        else:
            self.masks.update(masks)


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """A page-locked copy of a host tensor, so the copy to the device is a DMA that does not hold this thread.
    Buffers come from torch's pinned cache and go back once their copy is done: about one layer's worth."""
    return t if t.is_pinned() else torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)


def _pinned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True)


def _set(module, kind: str, name: str, tensor: torch.Tensor) -> None:
    if kind == "param":
        module._parameters[name].data = tensor
    else:
        module._buffers[name] = tensor
