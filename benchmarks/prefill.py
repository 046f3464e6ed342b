"""Prefill of a few dozen tokens -- what every keystroke re-reads in a fill-in-the-middle prompt --
per matrix and per model, with the BLAS product asked for in each orientation (csrc/gemm.cpp).

    python benchmarks/prefill.py [--threads 2] [--models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b,DIR]
                                 [--write docs/PERFORMANCE.md]

Per matrix (the 1.5B preset's shapes, 40% unstructured sparsity, weights hot): milliseconds per call
for the four layer kinds a prefill batch meets -- dense bf16 (`DenseBF16Linear`), packed bf16 and
packed int8 (`SparseLinear`), dense int8 (`DenseInt8Linear`) -- at batches of 16, 64, 128 and 512
rows, with the product asked for as x @ W^T ("x-first", torch's F.linear) and as W @ x^T transposed
back ("weight-first"), the two timed in turn call by call.

Per model: the re-prefill a typed request costs in a PSM prompt -- `--prefix` tokens cached, the
`--tokens` after them fed again (the suffix behind the cursor, the middle marker and what was typed)
-- through the engine's own `Completer.feed`, both orientations alternating round by round. A model
is a preset name, a hub id or a sub-model directory, loaded as the server loads it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subcoder.pruner import cpu  # noqa: E402
from subcoder.pruner import kernels as sparse  # noqa: E402
from subcoder.pruner.kernels import debug  # noqa: E402

SHAPES = [(8960, 1536, "gate/up 1.5B"), (1536, 8960, "down 1.5B"), (1536, 1536, "q/o proj 1.5B"),
          (256, 1536, "k/v proj 1.5B")]
BATCHES = (16, 64, 128, 512)
ORIENTATIONS = {"x-first": False, "weight-first": True}
SECTION = "## Prefill GEMM orientation"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matrix_rows(repeat: int, sparsity: float) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for out, inp, label in SHAPES:
        w = torch.randn(out, inp, generator=gen)
        m = torch.rand(out, inp, generator=gen) >= sparsity
        lin = torch.nn.Linear(inp, out, bias=False)
        lin.weight.data = (w * m).to(torch.bfloat16).float()
        layers = {
            "dense bf16": sparse.DenseBF16Linear(torch.nn.Parameter(lin.weight.data.to(torch.bfloat16),
                                                                    requires_grad=False)),
            "packed bf16": sparse.SparseLinear.from_dense(lin, m),
            "packed int8": sparse.SparseLinear.from_dense(lin, m, values="int8"),
            "dense int8": sparse.DenseInt8Linear.from_linear(lin),
        }
        for batch in BATCHES:
            x = torch.randn(batch, inp, generator=gen).to(torch.bfloat16)
            cells = []
            for kind, layer in layers.items():
                times = {o: [] for o in ORIENTATIONS}
                with torch.no_grad():
                    for _ in range(repeat + 2):
                        for o, on in ORIENTATIONS.items():
                            with debug.overrides(gemm_weight_first=on):
                                times[o].append(_timed(lambda: layer(x)))
                ms = {o: statistics.median(t[2:]) * 1e3 for o, t in times.items()}
                cells.append(f"{ms['x-first']:.2f} / {ms['weight-first']:.2f} "
                             f"({ms['x-first'] / ms['weight-first']:.2f}x)")
            row = f"| {out} x {inp} | {label} | {batch} | " + " | ".join(cells) + " |"
            print(row, flush=True)
            rows.append(row)
    return rows


def model_rows(models: list[str], prefix: int, tokens: int, rounds: int) -> list[str]:
    from subcoder.pruner.engine.completer import Completer, crop_cache
    from subcoder.pruner.loader import load_model

    text = (Path(__file__).resolve().parents[1] / "pruner" / "engine" / "completer.py").read_text()
    rows = []
    for name in models:
        loaded = load_model(name)
        completer = Completer(loaded, context_tokens=prefix + tokens)
        ids = loaded.tokenizer(text)["input_ids"][: prefix + tokens]
        cache = completer.new_cache()
        with torch.inference_mode():
            completer.feed(ids[:prefix], cache)

            def again():
                crop_cache(cache, prefix)
                completer.feed(ids[prefix:], cache)

            times = {o: [] for o in ORIENTATIONS}
            for _ in range(rounds + 1):
                for o, on in ORIENTATIONS.items():
                    with debug.overrides(gemm_weight_first=on):
                        times[o].append(_timed(again))
        ms = {o: statistics.median(t[1:]) * 1e3 for o, t in times.items()}
        label = Path(name).name if Path(name).is_dir() else name
        row = (f"| {label} | {ms['x-first']:.0f} | {ms['weight-first']:.0f} | "
               f"{ms['x-first'] / ms['weight-first']:.2f}x |")
        print(row, flush=True)
        rows.append(row)
        del completer, loaded, cache
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15, help="calls per matrix figure (median)")
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--models", default="", help="comma-separated models for the per-model table (none: skip it)")
    ap.add_argument("--prefix", type=int, default=388, help="prompt tokens already cached")
    ap.add_argument("--tokens", type=int, default=62, help="tokens fed again after them")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds per model (median)")
    ap.add_argument("--write", metavar="MD", help="replace this machine's block of the prefill section of this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ok, reason = sparse.kernel_available()
    if not ok:
        print(f"kernel unavailable: {reason}", file=sys.stderr)
        return 1
    isa = debug.ISA_NAMES.get(debug.current_isa(), "?")
    flags = cpu.cpu_flags()
    lines = [f"Machine: {cpu.cpu_name() or platform.processor()}"
             f"{' with AMX' if 'amx_bf16' in flags else ' without AMX'}, kernel ISA {isa}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}. Default orientation here: "
             f"{'weight-first' if 'amx_bf16' in flags else 'x-first'} (batches up to 128).", ""]
    head = ("| shape (out x in) | layer | batch | dense bf16 | packed bf16 | packed int8 | dense int8 |",
            "|---|---|---:|---:|---:|---:|---:|")
    lines += [f"Per matrix, {args.sparsity:.0%} unstructured sparsity, weights hot, median of {args.repeat} "
              "calls; each cell: ms x-first / ms weight-first (speed-up):", "", *head]
    print("\n".join(lines), flush=True)
    lines += matrix_rows(args.repeat, args.sparsity)
    models = [m for m in args.models.split(",") if m]
    if models:
        head = ("| model | x-first ms | weight-first ms | speed-up |", "|---|---:|---:|---:|")
        lines += ["", f"Per model: {args.tokens} tokens fed after {args.prefix} cached (a typed PSM request's "
                  f"re-prefill), median of {args.rounds} alternating rounds:", "", *head]
        print("\n".join(lines[-4:]), flush=True)
        lines += model_rows(models, args.prefix, args.tokens, args.rounds)
    if args.write:
        from _report import write_block

        kind = cpu.machine_kind(isa)
        cmd = ("python benchmarks/prefill.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
        write_block(Path(args.write), SECTION, f"<!-- prefill-{kind}:begin (generated by benchmarks/prefill.py) -->",
                    f"<!-- prefill-{kind}:end -->", [f"Command: `{cmd}`", "", *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
