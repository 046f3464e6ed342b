"""Batch-1 (decode) and batch-512 (prefill) timings of the sparse CPU kernel against torch.

    python benchmarks/sparse_kernel.py [--threads 2] [--repeat 200] [--write docs/PERFORMANCE.md]

For each shape (out x in) at 50% per-row sparsity:
  torch  -- F.linear with the dense bf16 weight (zeros in pruned places)
  dense  -- this package's dense bf16 matvec (DenseBF16Linear)
  sparse -- SparseLinear (packed mask + values)
Two regimes: "hot" repeats the call on one weight (it stays in the CPU caches when small), "cold"
rotates through enough copies of the weight that every call streams it from DRAM, which is what
decoding a whole model does (Qwen2.5-Coder-0.5B is ~400 MB per token at 50%, far beyond L3).
Each figure is the median (or --stat min) of --repeat calls, the candidates timed in turn call by call;\nrun on a quiet machine, and rerun when figures jump.

    python benchmarks/sparse_kernel.py --formats [--isa 1] [--write docs/PERFORMANCE.md]

compares the value formats instead, per matrix at the 1.5B preset's shapes and 30/50/70% per-row
sparsity, cold (rotating through 512 MiB of copies per candidate, or twice the L3 the CPU reports if more, so every call streams from DRAM): dense bf16 kernel (DenseBF16Linear), dense int8 (DenseInt8Linear),
packed bf16 and packed int8 (SparseLinear), each as microseconds per call and speed-up over dense bf16
in the same run, with the bytes each call reads and the time a purely bandwidth-bound call would take
at the streaming-read bandwidth measured at the start of the run. `--isa 1` forces the AVX2 path.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subcoder.pruner import kernels as sparse  # noqa: E402
from subcoder.pruner.kernels import debug  # noqa: E402
from subcoder.pruner import cpu  # noqa: E402
from subcoder.pruner.cpu import read_bandwidth  # noqa: E402

DECODE_SHAPES = [  # (out, in, label)
    (896, 896, "q/o proj 0.5B"),
    (128, 896, "k/v proj 0.5B"),
    (4864, 896, "gate/up 0.5B"),
    (896, 4864, "down 0.5B"),
    (151936, 896, "lm_head 0.5B (dense)"),
    (4096, 11008, "down 7B-class"),
    (11008, 4096, "gate/up 7B-class"),
]
PREFILL_SHAPES = [(896, 896), (4864, 896), (896, 4864), (4096, 11008)]
# Copies of a weight until this much: more than the L3 cache (at least twice what this CPU reports).
COLD_BYTES = max(96 << 20, 2 * (cpu.last_level_cache_bytes() or 0))


def per_row_mask(out: int, inp: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    keep = inp - int(round(sparsity * inp))
    return torch.rand(out, inp, generator=gen).argsort(dim=1) < keep


STAT = {"fn": statistics.median, "name": "median"}  # --stat min: the fastest call


def rotating(fns):
    state = {"i": 0}

    def call():
        fn = fns[state["i"] % len(fns)]
        state["i"] += 1
        return fn()

    return call


def interleaved_ms(fns: dict, repeat: int, warmup: int = 5) -> dict:
    """Time the candidates in turn, call by call, so that load from other processes hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            if getattr(fn, "before", None):
                fn.before()
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            before = getattr(fn, "before", None)
            if before:  # untimed set-up of this candidate (e.g. the int8 route it runs on)
                before()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: STAT["fn"](v) * 1e3 for k, v in times.items()}


def bench_decode(out, inp, sparsity, repeat, cold, gen):
    dense_only = out * inp > 50_000_000  # lm_head: stays dense
    w = torch.randn(out, inp, generator=gen).to(torch.bfloat16)
    m = None if dense_only else per_row_mask(out, inp, sparsity, gen)
    if m is not None:
        w = w * m
    copies = max(1, COLD_BYTES // (out * inp * 2)) if cold else 1
    x = torch.randn(1, inp, generator=gen).to(torch.bfloat16)
    dense_w = [w] + [w.clone() for _ in range(copies - 1)]
    heads = [sparse.DenseBF16Linear(torch.nn.Parameter(d, requires_grad=False)) for d in dense_w]
    fns = {
        "torch": rotating([lambda d=d: F.linear(x, d) for d in dense_w]),
        "dense": rotating([lambda h=h: h(x) for h in heads]),
    }
    with torch.no_grad():
        if m is not None:
            words, values = sparse.pack_rows(w, m)
            layers = [sparse.SparseLinear(words, values, (out, inp)) for _ in range(copies)]
            fns["sparse"] = rotating([lambda s=s: s(x) for s in layers])
            ref = F.linear(x.float(), w.float())
            err = (layers[0](x).float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-9)
            assert err < 2e-2, f"sparse result off by {err}"
        return interleaved_ms(fns, repeat)


def bench_prefill(out, inp, sparsity, repeat, gen, batch=512):
    w = torch.randn(out, inp, generator=gen).to(torch.bfloat16)
    m = per_row_mask(out, inp, sparsity, gen)
    w = w * m
    x = torch.randn(batch, inp, generator=gen).to(torch.bfloat16)
    layer = sparse.SparseLinear(*sparse.pack_rows(w, m), (out, inp))
    with torch.no_grad():
        r = interleaved_ms({"torch": lambda: F.linear(x, w), "sparse": lambda: layer(x)}, repeat, warmup=3)
    return r["torch"], r["sparse"]


FORMAT_SHAPES = [  # (out, in, label): Qwen2.5-Coder-1.5B's decoder matrices
    (8960, 1536, "gate/up 1.5B"),
    (1536, 8960, "down 1.5B"),
    (1536, 1536, "q/o proj 1.5B"),
    (256, 1536, "k/v proj 1.5B"),
]
FORMAT_SPARSITIES = (0.3, 0.5, 0.7)
# Copies per candidate until this much: the L3 cache this VM reports is 32 MiB, yet 96 MiB of copies
# still ran at 2-3x the streaming bandwidth (a larger cache behind it), so this is well past any cache;
# a Xeon VM here reports 480 MiB, so never less than twice the reported cache.
FORMAT_COLD_BYTES = max(512 << 20, 2 * (cpu.last_level_cache_bytes() or 0))


def format_bytes(out: int, inp: int, nnz: int) -> dict[str, int]:
    """Weight bytes one call reads, per format (the input and output are negligible)."""
    mask = out * ((inp + 31) // 32) * 4
    sizes = {"dense bf16": out * inp * 2, "dense int8": out * inp + out * 4,
             "packed bf16": mask + nnz * 2, "packed int8": mask + nnz + out * 4}
    return {**sizes, **{f"{k} {ROUTE_OTHER[k]}": sizes[k] for k in ROUTE_OTHER}}


# Where the CPU has AVX-512 VNNI, int8 rows take the VNNI route (int16 input, vpdpwssd), as measured
# (csrc/q8_vnni.h); each is also timed on the other route, the bf16 one.
ROUTE_OTHER = {"dense int8": "(bf16 route)", "packed int8": "(bf16 route)"}


def format_names() -> tuple[str, ...]:
    names = ("dense bf16", "dense int8", "packed bf16", "packed int8")
    if debug.q8_vnni_here():
        names += tuple(f"{k} {v}" for k, v in ROUTE_OTHER.items())
    return names


def bench_formats(out, inp, sparsity, repeat, gen, dense_layers=None):
    """ms per call of the four formats on one shape, cold (every call reads its weight from DRAM)."""
    from subcoder.pruner.kernels import int8

    w = torch.randn(out, inp, generator=gen).to(torch.bfloat16)
    m = per_row_mask(out, inp, sparsity, gen)
    x = torch.randn(1, inp, generator=gen).to(torch.bfloat16)
    nnz = int(m.sum())
    sizes = format_bytes(out, inp, nnz)
    copies = {k: max(1, FORMAT_COLD_BYTES // b) for k, b in sizes.items()}
    words, kept = sparse.pack_rows(w, m)
    offsets = sparse.row_offsets(words)
    q, scales = int8.quantise_rows(kept, offsets)
    dq, dscales = int8.quantise_dense(w)
    layers = {
        "dense bf16": [sparse.DenseBF16Linear(torch.nn.Parameter(w.clone(), requires_grad=False))
                       for _ in range(copies["dense bf16"])],
        # every copy its own memory (the layers keep contiguous tensors as given: clone them)
        "dense int8": [sparse.DenseInt8Linear(dq.clone(), dscales) for _ in range(copies["dense int8"])],
        "packed bf16": [sparse.SparseLinear(words.clone(), kept, (out, inp)) for _ in range(copies["packed bf16"])],
        "packed int8": [sparse.SparseLinear(words.clone(), q, (out, inp), scales=scales)
                        for _ in range(copies["packed int8"])],
    }
    vnni = debug.q8_vnni_here()
    if vnni:  # copies of their own, so that no candidate reads what another has just brought into cache
        layers[f"dense int8 {ROUTE_OTHER['dense int8']}"] = [sparse.DenseInt8Linear(dq.clone(), dscales)
                                                             for _ in range(copies["dense int8"])]
        layers[f"packed int8 {ROUTE_OTHER['packed int8']}"] = [
            sparse.SparseLinear(words.clone(), q.clone(), (out, inp), scales=scales) for _ in range(copies["packed int8"])]
    with torch.no_grad():
        ref = F.linear(x.float(), (w * m).float())
        for name in ("packed bf16", "packed int8"):  # a wrong kernel must not produce a fast figure
            err = (layers[name][0](x).float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-9)
            assert err < 3e-2, f"{name} result off by {err}"
        fns = {k: rotating([lambda s=s: s(x) for s in v]) for k, v in layers.items()}
        default = debug.set_q8_vnni(debug.Q8_VNNI_DENSE | debug.Q8_VNNI_PACKED) if vnni else 0
        if vnni:  # each int8 candidate sets its route before its (untimed) call
            route = {"dense int8": debug.Q8_VNNI_DENSE, "packed int8": debug.Q8_VNNI_PACKED,
                     f"dense int8 {ROUTE_OTHER['dense int8']}": 0,
                     f"packed int8 {ROUTE_OTHER['packed int8']}": 0}
            for k, fn in fns.items():
                if k in route:
                    fn.before = lambda r=route[k]: debug.set_q8_vnni(r)
        try:
            return interleaved_ms(fns, repeat), sizes
        finally:
            if vnni:
                debug.set_q8_vnni(default)


def run_formats(args, gen) -> list[str]:
    bw = read_bandwidth()
    load = os.getloadavg()
    names = format_names()
    lines = [
        f"Machine: {machine_line()}; load average at the start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
        f"Streaming-read bandwidth (int64 sum over 1 GiB, {torch.get_num_threads()} threads, best of 5): "
        f"**{bw / 1e9:.1f} GB/s**.",
        "",
        f"Decode, batch 1, per-row sparsity, cold ({FORMAT_COLD_BYTES >> 20} MiB of copies per candidate: every call "
        "streams its weight "
        f"from DRAM), {STAT['name']} of "
        f"{args.repeat} calls. Each cell: microseconds per call (speed-up over dense bf16 in the same run) "
        "[the bandwidth-bound time for the bytes it reads]:",
        "",
        "| shape (out x in) | layer | sparsity | " + " | ".join(names) + " | MB read (bf16 / int8, dense -> packed) |",
        "|---|---|---:|" + "---:|" * len(names) + "---|",
    ]
    print("\n".join(lines), flush=True)
    for out, inp, label in FORMAT_SHAPES:
        for sparsity in FORMAT_SPARSITIES:
            ms, sizes = bench_formats(out, inp, sparsity, args.repeat, gen)
            base = ms["dense bf16"]
            cells = [f"{ms[n] * 1e3:.0f} ({base / ms[n]:.2f}x) [{sizes[n] / bw * 1e6:.0f}]" for n in names]
            mb = (f"{sizes['dense bf16'] / 1e6:.1f} -> {sizes['packed bf16'] / 1e6:.1f} / "
                  f"{sizes['dense int8'] / 1e6:.1f} -> {sizes['packed int8'] / 1e6:.1f}")
            row = f"| {out} x {inp} | {label} | {sparsity:.0%} | " + " | ".join(cells) + f" | {mb} |"
            lines.append(row)
            print(row, flush=True)
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."]
    return lines


def machine_line() -> str:
    name = cpu.cpu_name() or "unknown CPU"
    extras = [label for flag, label in (("avx512_vnni", "AVX-512 VNNI"), ("amx_bf16", "AMX"))
              if flag in cpu.cpu_flags()]
    if extras:
        name += " with " + " and ".join(extras)
    isa = debug.ISA_NAMES.get(debug.current_isa(), "?") if sparse.kernel_available()[0] else "none"
    return (f"{name}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} threads, kernel ISA {isa}, "
            f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=200, help="calls per decode figure (median)")
    ap.add_argument("--prefill-repeat", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="min resists other processes sharing the CPU; median is the default")
    ap.add_argument("--write", metavar="MD", help="replace the 'Sparse kernel' section of this markdown file "
                                                   "(with --formats: the block of the ISA run)")
    ap.add_argument("--formats", action="store_true",
                    help="compare dense/packed bf16/int8 at the 1.5B shapes and 30/50/70%% sparsity instead")
    ap.add_argument("--isa", type=int, choices=(1, 2), help="force the kernel's ISA: 1 AVX2, 2 AVX-512 BF16")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    STAT.update(fn=min if args.stat == "min" else statistics.median, name=args.stat)
    ok, reason = sparse.kernel_available()
    if not ok:
        print(f"kernel unavailable: {reason}", file=sys.stderr)
        return 1
    gen = torch.Generator().manual_seed(0)
    if args.formats:
        with debug.overrides(isa=args.isa):
            lines = run_formats(args, gen)
        if args.write:
            isa = cpu.machine_kind(debug.ISA_NAMES.get(args.isa or debug.best_isa(), "?"))
            begin = f"<!-- int8-values-{isa}:begin (generated by benchmarks/sparse_kernel.py --formats) -->"
            cmd = ("python benchmarks/sparse_kernel.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
            from _report import write_block

            write_block(Path(args.write), FORMATS_SECTION, begin, f"<!-- int8-values-{isa}:end -->",
                        [f"Command: `{cmd}`", "", *lines])
        return 0
    lines = [f"Machine: {machine_line()}.", ""]
    lines += [
        f"Decode, batch 1, {args.sparsity:.0%} per-row sparsity, {args.stat} of {args.repeat} calls, milliseconds "
        "(ratio = torch / ours, higher is better):",
        "",
        "| shape (out x in) | layer | regime | torch bf16 F.linear | dense kernel | sparse kernel | torch/dense | torch/sparse |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines[-4:]), flush=True)
    for out, inp, label in DECODE_SHAPES:
        for regime in ("hot", "cold"):
            r = bench_decode(out, inp, args.sparsity, args.repeat, regime == "cold", gen)
            sp = r.get("sparse")
            row = (f"| {out} x {inp} | {label} | {regime} | {r['torch']:.3f} | {r['dense']:.3f} | "
                   f"{'%.3f' % sp if sp else 'n/a'} | {r['torch'] / r['dense']:.2f} | "
                   f"{'%.2f' % (r['torch'] / sp) if sp else 'n/a'} |")
            lines.append(row)
            print(row, flush=True)
    if not args.no_prefill:
        lines += [
            "",
            f"Prefill, batch 512, {args.sparsity:.0%} per-row sparsity, {args.stat} of {args.prefill_repeat} calls, milliseconds:",
            "",
            "| shape (out x in) | torch bf16 F.linear (dense) | SparseLinear | torch/sparse |",
            "|---|---:|---:|---:|",
        ]
        print("\n".join(lines[-4:]), flush=True)
        for out, inp in PREFILL_SHAPES:
            t_torch, t_sparse = bench_prefill(out, inp, args.sparsity, args.prefill_repeat, gen)
            row = f"| {out} x {inp} | {t_torch:.1f} | {t_sparse:.1f} | {t_torch / t_sparse:.2f} |"
            lines.append(row)
            print(row, flush=True)
    if args.write:
        write_section(Path(args.write), lines, argv)
    return 0


SECTION = "## Sparse kernel"
FORMATS_SECTION = "## int8 kept values"
BEGIN, END = "<!-- sparse-kernel:begin (generated by benchmarks/sparse_kernel.py) -->", "<!-- sparse-kernel:end -->"


def write_section(path: Path, lines: list[str], argv) -> None:
    from _report import write_block

    cmd = ("python benchmarks/sparse_kernel.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    write_block(path, SECTION, BEGIN, END, [f"Command: `{cmd}`", "", *lines])


if __name__ == "__main__":
    sys.exit(main())
