"""`SparseLinear`, `DenseBF16Linear`, `DenseInt8Linear` and `sparsify(model, masks)`: the layers a
sub-model (or a dense model on the same engine) decodes with."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import packing
from . import int8, native

log = logging.getLogger("subcoder.pruner.kernels")

_KERNEL_DTYPES = (torch.bfloat16, torch.float32)
# Batches from this size on multiply with torch (dense lm_head); below it the row kernel wins.
DENSE_KERNEL_MAX_BATCH = 8


def kernel_available() -> tuple[bool, str]:
    """(True, what was loaded) or (False, why not): whether the kernel can run on this machine.
    Builds it on the first call when needed; the answer is computed once per process. Whether it
    *should* run is the caller's choice (`sparsify(kernel=...)`, EngineOptions.sparse_kernel)."""
    ops = native.get_ops()
    return ops is not None, native.load_reason()


def _as_bf16_values(values: torch.Tensor) -> torch.Tensor:
    if values.dtype == torch.int16:
        return values.view(torch.bfloat16)
    return values.to(torch.bfloat16)


class SparseLinear(nn.Module):
    """A linear layer whose weight is kept only in the packed format (no dense copy).

    Built from the storage tensors: `mask_words` int32 (out, ceil(in/32)), `values` bf16 (nnz,) --
    or int8 (nnz,) with `scales` fp32 (out,), one per row (storage's `values: int8`, see `int8`) --
    `shape` (out, in), optional `bias`. Works on inputs of any leading shape, bf16 or fp32 (other
    float dtypes go through fp32); the output has the input's dtype. `use_kernel=False` (or no
    kernel on this machine) expands the dense weight on every call instead: slow, same results to
    bf16 rounding.
    """

    def __init__(self, mask_words: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 bias: torch.Tensor | None = None, *, scales: torch.Tensor | None = None, use_kernel: bool = True):
        super().__init__()
        self.use_kernel = bool(use_kernel)
        out_features, in_features = (int(s) for s in shape)
        if mask_words.dtype != torch.int32 or tuple(mask_words.shape) != (out_features, packing.n_words(in_features)):
            raise ValueError(
                f"mask words must be int32 of shape ({out_features}, {packing.n_words(in_features)}), "
                f"got {mask_words.dtype} {tuple(mask_words.shape)}"
            )
        self.in_features, self.out_features = in_features, out_features
        words = mask_words.detach().contiguous().cpu()
        offsets = packing.row_offsets(words)
        nnz = int(offsets[-1])
        self.value_format = "int8" if values.dtype == torch.int8 else "bf16"
        if self.value_format == "int8":
            if scales is None or scales.numel() != out_features:
                raise ValueError(f"int8 values need {out_features} per-row scales, got "
                                 f"{'none' if scales is None else scales.numel()}")
            values, dtype = values.detach().reshape(-1).cpu(), torch.int8
        else:
            values, dtype = _as_bf16_values(values.detach().reshape(-1).cpu()), torch.bfloat16
        if values.numel() < nnz:
            raise ValueError(f"{values.numel()} values for a mask that keeps {nnz}")
        # zeros after the last kept value, as many as the kernel's SIMD loads may read (its contract)
        padded = torch.zeros(nnz + (native.value_padding(dtype.itemsize) if self.use_kernel else 0), dtype=dtype)
        padded[:nnz] = values[:nnz]
        self.nnz = nnz
        # bf16 values as int16 and scales as int32 bits, so that model.to(dtype) / .float() never
        # converts them (int8 values are out of its reach anyway).
        self.register_buffer("mask", words, persistent=False)
        self.register_buffer("values", padded.view(torch.int16) if dtype == torch.bfloat16 else padded,
                             persistent=False)
        self.register_buffer("row_offsets", offsets, persistent=False)
        if self.value_format == "int8":
            bits = scales.detach().reshape(-1).cpu().to(torch.float32).contiguous().view(torch.int32)
            self.register_buffer("scales", bits, persistent=False)
        else:
            self.scales = None
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor, *, values: str = "bf16",
                   use_kernel: bool = True) -> SparseLinear:
        """The packed layer of `linear`'s kept weights; `values="int8"` quantises them per row."""
        shape = (linear.out_features, linear.in_features)
        if int8.check_format(values) == "int8":
            words, kept = packing.pack_rows(linear.weight.detach().cpu(), mask.cpu(), dtype=None)
            q, scales = int8.quantise_rows(kept, packing.row_offsets(words))
            return cls(words, q, shape, linear.bias, scales=scales, use_kernel=use_kernel)
        words, kept = packing.pack_rows(linear.weight.detach().cpu(), mask.cpu())
        return cls(words, kept, shape, linear.bias, use_kernel=use_kernel)

    def packed(self) -> tuple[torch.Tensor, ...]:
        """The storage format: (mask words int32, values bf16 (nnz,)), or for int8 values
        (mask words, values int8 (nnz,), scales fp32 (out,))."""
        if self.value_format == "int8":
            return self.mask, self.values[: self.nnz], self.scales.view(torch.float32)
        return self.mask, self.values.view(torch.bfloat16)[: self.nnz]

    def nbytes(self) -> int:
        b = self.mask.numel() * 4 + self.nnz * self.values.element_size()
        if self.scales is not None:
            b += self.scales.numel() * 4
        return b + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def dense_weight(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        if self.value_format == "int8":
            kept = int8.dequantise_rows(self.values, self.scales.view(torch.float32), self.row_offsets)
            return packing.unpack(self.mask, kept, self.in_features, dtype)
        return packing.unpack(self.mask, self.values, self.in_features, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = native.get_ops() if self.use_kernel else None
        if ops is not None and x.device.type == "cpu":
            xin = x if x.dtype in _KERNEL_DTYPES else x.float()
            d = self.__dict__  # the decode hot path: one call, no Python tensor work
            buffers, bias = d["_buffers"], d["_parameters"]["bias"]
            if self.value_format == "int8":
                y = ops.sparse_linear_q8(xin, buffers["mask"], buffers["values"], buffers["scales"],
                                         buffers["row_offsets"], self.in_features, bias, 0)
            else:
                y = ops.sparse_linear(xin, buffers["mask"], buffers["values"], buffers["row_offsets"],
                                      self.in_features, bias, 0)
            return y if xin is x else y.to(x.dtype)
        # fallback: the dense weight, expanded on the fly
        w = self.dense_weight(x.dtype).to(x.device)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, density={density:.3f}, "
                f"values={self.value_format}, bias={self.bias is not None}")


_ISA_AVX2 = 1
_GEMM_CHUNK_BYTES = 4 << 20  # fp32 weight rows converted at a time (stays in L2/L3)


@torch.no_grad()
def _dense_gemm_fp32(x2: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out_features, in_features = w.shape
    xf = x2.float()
    yt = torch.empty(out_features, x2.shape[0], dtype=torch.float32)
    chunk = max(64, _GEMM_CHUNK_BYTES // (4 * in_features))
    for r0 in range(0, out_features, chunk):
        torch.mm(w[r0 : r0 + chunk].float(), xf.T, out=yt[r0 : r0 + chunk])
    y = yt.T
    if bias is not None:
        y = y + bias.float()
    return y.contiguous()


class DenseBF16Linear(nn.Module):
    """A dense bf16 linear layer (lm_head) that decodes through the kernel's bf16 matvec.

    It holds the very `weight` Parameter it was given, so a weight tied to the input embedding
    stays tied and is not duplicated. `use_kernel=False` multiplies with torch.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None, *, use_kernel: bool = True):
        super().__init__()
        self.use_kernel = bool(use_kernel)
        if weight.dim() != 2:
            raise ValueError("weight must be 2-D (out, in)")
        self.out_features, self.in_features = weight.shape
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, use_kernel: bool = True) -> DenseBF16Linear:
        return cls(linear.weight, linear.bias, use_kernel=use_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        w = self.weight
        ops = native.get_ops() if self.use_kernel else None
        if (
            ops is not None
            and x2.shape[0] < DENSE_KERNEL_MAX_BATCH
            and w.dtype == torch.bfloat16
            and w.device.type == "cpu"
            and w.is_contiguous()
            and x2.device.type == "cpu"
        ):
            xin = x2 if x2.dtype in (torch.bfloat16, torch.float32) else x2.float()
            with torch.no_grad():
                y = ops.dense_linear(xin, w, self.bias).to(x.dtype)
        elif ops is not None and int(ops.get_isa()) == _ISA_AVX2 and w.dtype == torch.bfloat16 and w.device.type == "cpu":
            # No native bf16 products on this CPU: torch's bf16 matmul is several times slower
            # than fp32 BLAS, so convert the weight in row chunks and multiply in fp32.
            y = _dense_gemm_fp32(x2, w, self.bias).to(x.dtype)
        elif ops is not None and w.dtype == torch.bfloat16 and w.device.type == "cpu" and w.is_contiguous():
            # prefill: the BLAS in the orientation the kernel finds fastest here (csrc/gemm.cpp)
            with torch.no_grad():
                y = ops.dense_gemm(x2, w, self.bias).to(x.dtype)
        else:
            y = F.linear(x2.to(w.dtype), w, self.bias).to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class DenseInt8Linear(nn.Module):
    """A dense linear layer stored as int8 with per-row fp32 scales (`int8.quantise_dense`): the
    dense counterpart of a sub-model with int8 values, so that "int8 dense" and "int8 sparse" are
    compared on the same engine (EngineOptions.dense_values). Batches below the kernel's GEMM
    threshold run the row kernels; larger ones (prefill) convert the weight in row chunks and
    multiply with the BLAS. Without the kernel it dequantises and multiplies with torch.
    """

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None, *,
                 use_kernel: bool = True):
        super().__init__()
        if q.dim() != 2 or q.dtype != torch.int8 or scales.numel() != q.shape[0]:
            raise ValueError("an int8 (out, in) weight and one scale per row are needed")
        self.use_kernel = bool(use_kernel)
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_q", q.detach().contiguous().cpu(), persistent=False)
        # fp32 bits as int32: out of reach of model.to(dtype)
        self.register_buffer("scales", scales.detach().reshape(-1).cpu().to(torch.float32).contiguous().view(torch.int32),
                             persistent=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, use_kernel: bool = True) -> DenseInt8Linear:
        q, scales = int8.quantise_dense(linear.weight)
        return cls(q, scales, linear.bias, use_kernel=use_kernel)

    def dense_weight(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return int8.dequantise_dense(self.weight_q, self.scales.view(torch.float32)).to(dtype)

    def nbytes(self) -> int:
        b = self.weight_q.numel() + self.scales.numel() * 4
        return b + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = native.get_ops() if self.use_kernel else None
        if ops is not None and x.device.type == "cpu":
            xin = x if x.dtype in _KERNEL_DTYPES else x.float()
            d = self.__dict__
            y = ops.dense_linear_q8(xin, d["_buffers"]["weight_q"], d["_buffers"]["scales"], self.bias)
            return y if xin is x else y.to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dense_weight(x.dtype).to(x.device), b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, values=int8, bias={self.bias is not None}"


def dense_kernel_layer(linear: nn.Linear, values: str = "bf16", *, use_kernel: bool = True) -> nn.Module:
    """A dense model's linear on the kernel: `DenseBF16Linear` (sharing the weight) for bf16 values,
    `DenseInt8Linear` (a quantised copy; the bf16 weight can then be dropped) for int8."""
    if int8.check_format(values) == "int8":
        return DenseInt8Linear.from_linear(linear, use_kernel=use_kernel)
    return DenseBF16Linear.from_linear(linear, use_kernel=use_kernel)


@dataclass
class SparsifyReport:
    replaced: list[str] = field(default_factory=list)  # module names now SparseLinear
    lm_head: str = "unchanged"  # "dense-kernel" when wrapped by DenseBF16Linear
    linear_bytes_before: int = 0  # the replaced linears' weights (+ bias), dense
    linear_bytes_after: int = 0  # the same in the packed format
    model_bytes_before: int = 0  # every parameter and buffer, shared storage counted once
    model_bytes_after: int = 0
    kernel: bool = False
    kernel_reason: str = ""

    def summary(self) -> str:
        mb = 1024 * 1024
        return (
            f"{len(self.replaced)} sparse linears ({self.linear_bytes_before / mb:.1f} -> {self.linear_bytes_after / mb:.1f} MiB), "
            f"model {self.model_bytes_before / mb:.1f} -> {self.model_bytes_after / mb:.1f} MiB, lm_head {self.lm_head}, "
            f"kernel: {self.kernel_reason if self.kernel else 'off (' + self.kernel_reason + ')'}"
        )


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model`, storage shared between tensors counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def _module_name(key: str) -> tuple[str, str | None]:
    """'a.b.weight' / 'a.b' -> ('a.b', None); 'a.b.weight.mask' -> ('a.b', 'mask')."""
    part = None
    for suffix in (".mask", ".values", ".scales"):
        if key.endswith(suffix):
            key, part = key[: -len(suffix)], suffix[1:]
    if key.endswith(".weight"):
        key = key[: -len(".weight")]
    return key, part


def _normalise(masks_or_packed: Mapping) -> dict[str, tuple]:
    """-> {module name: ("mask", bool (out, in)) | ("packed", words, values, scales or None)}."""
    out: dict[str, tuple] = {}
    flat: dict[str, dict[str, torch.Tensor]] = {}
    for key, val in masks_or_packed.items():
        name, part = _module_name(str(key))
        if part is not None:
            flat.setdefault(name, {})[part] = val
        elif isinstance(val, tuple | list) and len(val) in (2, 3, 4):  # (words, values[, shape[, scales]])
            out[name] = ("packed", val[0], val[1], val[3] if len(val) == 4 else None)
        elif isinstance(val, torch.Tensor) and val.dtype == torch.bool:
            out[name] = ("mask", val)
        else:
            raise ValueError(f"{key}: expected a bool mask or a (mask words, values) pair")
    for name, parts in flat.items():
        if not {"mask", "values"} <= set(parts):
            raise ValueError(f"{name}: needs both .mask and .values")
        out[name] = ("packed", parts["mask"], parts["values"], parts.get("scales"))
    return out


@torch.no_grad()
def sparsify(model: nn.Module, masks_or_packed: Mapping, *, dense_lm_head: bool = True,
             kernel: bool = True, values: str = "bf16") -> SparsifyReport:
    """Replace the pruned `nn.Linear`s of `model` by `SparseLinear`, in place.

    `masks_or_packed` maps module (or weight) names to a boolean keep-mask (out, in) -- the kept
    values are then read from the module's current weight -- or to a `(mask words, values[, shape])`
    tuple (`(mask words, int8 values, shape, scales)` for int8 values), or is a flat dict holding
    `NAME.mask` / `NAME.values` (/ `NAME.scales`) tensors as in the storage format. `values`: how
    layers built from a bool mask store their kept values ("bf16" or "int8"; packed inputs keep theirs).
    With `dense_lm_head`, a bf16 output projection that is not pruned is wrapped in
    `DenseBF16Linear` (sharing its weight, tied or not). `kernel=False`: the new layers compute with
    dense torch even where the kernel could run (packed storage all the same).
    """
    ok, reason = kernel_available() if kernel else (False, "turned off by the caller")
    report = SparsifyReport(kernel=ok, kernel_reason=reason)
    report.model_bytes_before = model_bytes(model)
    for name, spec in _normalise(masks_or_packed).items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name} is a {type(module).__name__}, not an nn.Linear")
        w = module.weight
        shape = (module.out_features, module.in_features)
        if spec[0] == "mask":
            if tuple(spec[1].shape) != shape:
                raise ValueError(f"{name}: mask {tuple(spec[1].shape)} does not match the weight {shape}")
            new = SparseLinear.from_dense(module, spec[1], values=values, use_kernel=kernel)
        else:
            new = SparseLinear(spec[1], spec[2], shape, module.bias, scales=spec[3], use_kernel=kernel)
        report.linear_bytes_before += w.numel() * w.element_size()
        if module.bias is not None:
            report.linear_bytes_before += module.bias.numel() * module.bias.element_size()
        report.linear_bytes_after += new.nbytes()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        report.replaced.append(name)

    if dense_lm_head and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        if type(head) is nn.Linear and head.weight.dtype == torch.bfloat16 and head.weight.is_contiguous():
            wrapped = DenseBF16Linear.from_linear(head, use_kernel=kernel)
            if hasattr(model, "set_output_embeddings"):
                model.set_output_embeddings(wrapped)
            else:  # pragma: no cover - every transformers causal LM has the setter
                model.lm_head = wrapped
            report.lm_head = "dense-kernel"
        elif isinstance(head, DenseBF16Linear):
            report.lm_head = "dense-kernel"
    report.model_bytes_after = model_bytes(model)
    log.info("sparsify: %s", report.summary())
    return report
