"""`subcoder`: the command line. Parse → config → one library call → exit code.

Errors the user can fix end with one line on stderr and exit status 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from . import __version__
from .errors import SubcoderError

log = logging.getLogger("subcoder")

EPILOG = """examples:
  subcoder prune                              # Python sub-model of the default model, 50% unstructured
  subcoder prune -l java --pattern 2:4        # Java, 2:4 semi-structured
  subcoder prune -l python --calibration mix --workspace ~/src/myproj
  subcoder generate -M python                 # complete code with the newest cached Python sub-model
  subcoder overlap SUBMODEL_A SUBMODEL_B --png overlap.png
  subcoder models                             # presets and cached sub-models
  subcoder serve                              # language server over stdio, for editors
"""

SAMPLE_PROMPT = '''def is_palindrome(text: str) -> bool:
    """Return True when text reads the same backwards, ignoring case and spaces."""
'''


# --------------------------------------------------------------------------- progress bars


class Bars:
    """Maps library progress events to one tqdm bar per stage (on stderr)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars = {}

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(event.stage)
        if bar is None or bar.total != event.total:
            if bar is not None:
                bar.close()
            unit = {"prune": "layer", "download": "file"}.get(event.stage, "step")
            bar = self.bars[event.stage] = tqdm(total=event.total, desc=f"{event.stage:>9}", unit=unit,
                                                file=sys.stderr, leave=True, dynamic_ncols=True)
        bar.n = event.done
        if event.message:
            bar.set_postfix_str(event.message[:60], refresh=False)
        bar.refresh()
        if event.done >= event.total:
            bar.close()
            self.bars.pop(event.stage, None)

    def close(self):
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# --------------------------------------------------------------------------- commands


def _add_model_args(p, default_help="preset, model directory, .gguf file or hub id"):
    from .presets import DEFAULT_PRESET

    p.add_argument("-M", "--model", default=DEFAULT_PRESET, help=f"base model: {default_help} (default: {DEFAULT_PRESET})")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="compute dtype; auto = bfloat16 on accelerators and CPUs with native bf16 (AVX-512 BF16, AMX), "
                        "float32 elsewhere, where emulated bf16 is several times slower (default: auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (accelerate spreads the layers over the GPUs and CPU that fit them) (default: cpu)")
    p.add_argument("--cache-dir", help="cache root (default: $SUBCODER_CACHE_DIR or the user cache)")


_DEVICE = re.compile(r"(cpu|auto|cuda(:\d+)?)")


def check_args(args) -> None:
    """Every argument checked before any work starts (no download begins for a command that will fail)."""
    device = getattr(args, "device", None)
    if device is not None:
        if not _DEVICE.fullmatch(device):
            raise SubcoderError(f"--device must be cpu, cuda, cuda:N or auto, not {device!r}")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SubcoderError(f"--device {device}: this machine has no CUDA device torch can use")
            index = int(device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise SubcoderError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    for name in ("max_new_tokens", "samples", "seq_len"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SubcoderError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    language = getattr(args, "language", None)
    if language is not None:
        from .languages import GENERAL, LANGUAGES

        if language not in LANGUAGES and language != GENERAL:
            raise SubcoderError(f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)} or {GENERAL}")
    values = getattr(args, "values", None)
    if values is not None:
        from .config import VALUE_FORMATS  # not kernels.int8: checking arguments imports no torch

        if values not in VALUE_FORMATS:
            raise SubcoderError(f"--values must be {' or '.join(VALUE_FORMATS)}, not {values!r}")
    mix = getattr(args, "mix_ratio", None)
    if mix is not None and not 0.0 <= mix <= 1.0:
        raise SubcoderError(f"--mix-ratio must be between 0 and 1, not {mix}")
    if getattr(args, "file", None) and not Path(args.file).is_file():
        raise SubcoderError(f"--file {args.file}: no such file")
    for name in ("workspace",):
        value = getattr(args, name, None)
        if value and not Path(value).is_dir():
            raise SubcoderError(f"--{name} {value}: not a folder")
    cache = getattr(args, "cache_dir", None)
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        raise SubcoderError(f"--cache-dir {cache}: exists and is not a folder")


def cmd_prune(args) -> int:
    from .calibration import CalibrationSpec
    from .config import PruneConfig
    from .extract import extract
    from .units import human_bytes

    config = PruneConfig(sparsity=args.sparsity if args.sparsity is not None else _default_sparsity(args.pattern),
                         pattern=args.pattern, method=args.method, values=args.values)
    spec = CalibrationSpec(source=args.calibration, workspace=Path(args.workspace) if args.workspace else None,
                           mix_ratio=args.mix_ratio, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                           half=args.half, sampling=args.sampling, fim=args.fim)
    bars = Bars(not args.quiet)
    try:
        result = extract(args.model, args.language, config, spec, Path(args.out) if args.out else None,
                         dtype=args.dtype, device=args.device, offload=args.offload, cache_dir=args.cache_dir,
                         force=args.force, progress=bars)
    finally:
        bars.close()
    m, r, s = result.manifest, result.report, result.sizes
    m_path = str(result.path)
    if args.json:
        print(json.dumps({"path": str(result.path), "cached": result.cached, "manifest": m, "sizes": s}, indent=2))
        return 0
    t = m.get("timings", {})
    print(f"sub-model   {result.path}{'  (cached)' if result.cached else ''}")
    print(f"base        {m['base_model']}  ({m.get('architecture')})")
    print(f"language    {m['language']}   method {m['method']}   pattern {m['pattern']}   values {m.get('values', 'bf16')}")
    print(f"calibration {m['calibration']['description']}")
    print(f"sparsity    {r.linear_sparsity:.2%} of decoder linear weights, {r.model_sparsity:.2%} of all parameters")
    print(f"size        pruned matrices {human_bytes(s['pruned_compact_bytes'])} vs {human_bytes(s['pruned_dense_bf16_bytes'])} "
          f"dense bf16 ({s['pruned_ratio']:.3f}x); directory {human_bytes(s['directory_bytes'])} "
          f"vs {human_bytes(s['dense_model_bf16_bytes'])} ({s['directory_ratio']:.3f}x)")
    print(f"time        load {t.get('load_s', 0)} s, calibration set {t.get('calibration_set_s', 0)} s, "
          f"prune {t.get('prune_s', 0)} s" + (f" (masks of {m['masks_from']})" if m.get("masks_from") else "")
          + f", save {t.get('save_s', 0)} s; peak memory {human_bytes(r.peak_host_bytes)}"
          + (f", device {human_bytes(r.peak_device_bytes)}" if r.peak_device_bytes else ""))
    if args.sample:
        del result  # the pruned base model goes before the sub-model loads (1.5B preset: peak 10.1 -> ~5.6 GB)
        from .memory import release_memory

        release_memory()
        _print_sample(Path(m_path), args, m["language"])
    return 0


def _default_sparsity(pattern: str) -> float:
    from .config import Pattern

    p = Pattern.parse(pattern)
    return p.sparsity if p.structured else 0.5


def _print_sample(path: Path, args, language: str) -> None:
    if language != "python":
        return
    from .engine.completer import Completer
    from .loader import load_model

    loaded = load_model(str(path), dtype=args.dtype, device=args.device)
    t0 = time.perf_counter()
    completion = Completer(loaded).complete(SAMPLE_PROMPT, "", max_new_tokens=48, mode="multi-line")
    print(f"completion  ({completion.new_tokens} tokens in {time.perf_counter() - t0:.2f} s, "
          f"sparse kernel {'on' if loaded.info.sparse_kernel else 'off'}):")
    print("  " + (SAMPLE_PROMPT + completion.text).replace("\n", "\n  "))


def cmd_generate(args) -> int:
    from .engine.completer import Completer
    from .engine.options import EngineOptions
    from .loader import load_model

    name = _submodel_or_model(args.model, args.cache_dir)
    prefix = _read_text(Path(args.file)) if args.file else (args.prompt if args.prompt is not None else SAMPLE_PROMPT)
    options = EngineOptions.from_env()  # read once, for the loader and the engine alike
    loaded = load_model(name, dtype=args.dtype, device=args.device, sparse=None if args.sparse else False,
                        options=options, cache_dir=args.cache_dir)
    completer = Completer(loaded, options=options)
    completion = completer.complete(prefix, args.suffix, max_new_tokens=args.max_new_tokens, mode=args.mode)
    if args.json:
        print(json.dumps(completion.__dict__))
    else:
        sys.stdout.write(completion.text + "\n")
        print(f"[{loaded.info.name}: {completion.prompt_tokens} prompt + {completion.new_tokens} new tokens in "
              f"{completion.seconds:.2f} s, sparse kernel {'on' if loaded.info.sparse_kernel else 'off'}]", file=sys.stderr)
    return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SubcoderError(f"cannot read {path}: {exc.strerror or exc}") from None


def _submodel_or_model(name: str, cache_dir) -> str:
    """`-m python` picks the newest cached Python sub-model; anything else is a model name."""
    from .languages import LANGUAGES
    from .paths import submodels_dir

    if name in LANGUAGES:
        found = sorted(submodels_dir(cache_dir).glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SubcoderError(f"no cached {name} sub-model; build one with: subcoder prune -l {name}")
        return str(found[-1])
    return name


def cmd_models(args) -> int:
    from .presets import cached_models
    from .units import human_bytes
    from .paths import clean_stale_temps, models_dir, submodels_dir
    from .storage import read_manifest

    rows = cached_models(args.cache_dir)
    subs = []
    root = submodels_dir(args.cache_dir)
    for folder in (root, models_dir(args.cache_dir)):  # what killed writes left (their writer is gone)
        for leftover in clean_stale_temps(folder):
            print(f"removed {leftover}, left by an interrupted write", file=sys.stderr)
    for d in sorted(root.glob("*")) if root.is_dir() else []:
        if d.is_dir() and not d.name.startswith("."):
            try:
                m = read_manifest(d)
            except SubcoderError:
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            subs.append({"path": str(d), "language": m.get("language"), "base_model": m.get("base_model"),
                         "method": m.get("method"), "pattern": m.get("pattern"), "sparsity": m.get("sparsity"),
                         "size_bytes": size})
    if args.json:
        print(json.dumps({"presets": rows, "submodels": subs}, indent=2))
        return 0
    print("presets:")
    for r in rows:
        mark = "*" if r["default"] else " "
        state = f"cached, {human_bytes(r['size_bytes'])}" if r["cached"] else "not fetched yet"
        print(f" {mark} {r['name']:<20} {state:<22} {r['description']}")
    print("   (* = default)")
    print(f"sub-models in {root}:" if subs else f"no sub-models in {root} yet")
    for s in subs:
        print(f"   {s['language']:<11} {s['method']}-{s['pattern']} {s['sparsity']:<5} {human_bytes(s['size_bytes']):>9}  "
              f"{s['base_model']}  {s['path']}")
    return 0


def cmd_overlap(args) -> int:
    from .overlap import compare_dirs, heatmap, table

    dirs = [Path(_submodel_or_model(d, args.cache_dir)) for d in args.submodels]
    labels = args.labels.split(",") if args.labels else None
    pairs = compare_dirs(dirs, labels)
    if args.json:
        print(json.dumps([p.__dict__ for p in pairs], indent=2))
    else:
        print(table(pairs))
    if args.png:
        print(f"heatmap: {heatmap(pairs, Path(args.png))}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import export

    out = export(Path(_submodel_or_model(args.submodel, args.cache_dir)), Path(args.out), args.format)
    if args.format == "hf":
        print(f"wrote a dense Hugging Face model to {out}")
    else:
        print(f"wrote a compressed-tensors checkpoint to {out} (serve it with: vllm serve {out})")
    return 0


def cmd_serve(args) -> int:
    from subcoder.server.main import run

    return run(args.rest)


def cmd_eval(args) -> int:
    from .evaluation.cli import run

    return run(args.rest)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # Light modules only: `subcoder --help` and argument errors must answer without importing torch.
    from .languages import GENERAL, LANGUAGES

    sources = ("corpus", "workspace", "mix")  # pruner.calibration.SOURCES (which imports torch); a test ties them

    parser = argparse.ArgumentParser(
        prog="subcoder",
        description="Language-specific code sub-models: prune a causal code LLM with Wanda, calibrated on one "
                    "programming language's code, and serve completions from it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"subcoder {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prune", help="extract a language sub-model with Wanda (or magnitude) pruning",
                       description="Extract a sub-model: calibrate on one language's code, prune every linear layer of "
                                   "the decoder with Wanda (|W|·||X||, per output row), store it compactly in the cache.")
    _add_model_args(p)
    p.add_argument("-l", "--language", default="python", help=f"{', '.join(LANGUAGES)} or {GENERAL} (default: python)")
    p.add_argument("-s", "--sparsity", type=float, help="fraction of weights removed, in (0,1) (default: 0.5, or N/M)")
    p.add_argument("-p", "--pattern", default="unstructured",
                   help="unstructured, or N:M: N of every M consecutive weights pruned (2:4, 4:8) (default: unstructured)")
    p.add_argument("--method", default="wanda", choices=["wanda", "magnitude"],
                   help="wanda scores |W|·||X|| from calibration; magnitude scores |W| alone, the baseline (default: wanda)")
    p.add_argument("--values", default="bf16",
                   help="how kept weights are stored: bf16 (exact), or int8 with one scale per row (0.31x of dense "
                        "bf16's bytes at 50%% instead of 0.56x; the kernel decodes them; rounds every weight to "
                        "1/254 of its row's range) (default: bf16)")
    p.add_argument("--calibration", default="corpus", choices=list(sources),
                   help="shipped corpus, your workspace's files, or a mix (default: corpus)")
    p.add_argument("--workspace", help="folder whose files calibrate (with --calibration workspace/mix)")
    p.add_argument("--mix-ratio", type=float, default=0.5, help="share of workspace windows in a mix (default: 0.5)")
    p.add_argument("--samples", type=int, default=32, help="calibration windows (default: 32)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="which calibration windows are drawn (default: 0)")
    p.add_argument("--sampling", choices=("stream", "files"), default="stream",
                   help="stream: windows cut from shuffled files joined end to end (a few files fill 32 x 512); "
                        "files: one window per file, round-robin over packages, data tables left out. Same "
                        "held-out perplexity on the default preset (benchmarks/calibration.py) (default: stream)")
    p.add_argument("--fim", type=float, default=0.0, metavar="SHARE",
                   help="share of the windows laid out as fill-in-the-middle prompts, PSM and SPM in turn, as the "
                        "server sends them (needs --sampling files and a model with FIM tokens) (default: 0)")
    p.add_argument("--half", type=int, choices=[0, 1], help="calibrate on one of two disjoint halves of the corpus's packages")
    p.add_argument("--offload", action="store_true", help="keep weights on the CPU, bring each layer to the accelerator in turn")
    p.add_argument("-o", "--out", help="output directory (default: the cache, named by its key)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache has this sub-model")
    p.add_argument("--no-sample", dest="sample", action="store_false", help="skip the demo completion")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("generate", help="complete code with a model or sub-model",
                       description="Complete code: greedy decoding from a sub-model (or any model), through the same "
                                   "engine the language server uses. The text before the cursor comes from --prompt, "
                                   "--file or a small built-in Python example; --suffix is the text after it.")
    _add_model_args(p, "a language with a cached sub-model (python, …), sub-model dir, preset, …")
    p.add_argument("--prompt", help="text before the cursor (default: a small Python function)")
    p.add_argument("--file", help="read the text before the cursor from a file")
    p.add_argument("--suffix", default="", help="text after the cursor (used for fill-in-the-middle)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="at most this many tokens (default: 64)")
    p.add_argument("--mode", default="multi-line", choices=["auto", "single-line", "multi-line"],
                   help="stop after one line, decode a block, or decide from the cursor (default: multi-line)")
    p.add_argument("--no-sparse", dest="sparse", action="store_false", help="run pruned layers dense")
    p.add_argument("--json", action="store_true", help="print the completion and its counts as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("models", help="list presets and cached sub-models",
                       description="List the model presets (fetched or not) and the sub-models in the cache.")
    p.add_argument("--cache-dir", help="cache root (default: $SUBCODER_CACHE_DIR or the user cache)")
    p.add_argument("--json", action="store_true", help="print the lists as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("overlap", help="Jaccard distances between sub-models' masks (table and heatmap)",
                       description="How differently sub-models were pruned: the Jaccard distance between the sets of "
                                   "weights each one keeps, per pair (0 = the same weights, 1 = disjoint).")
    p.add_argument("submodels", nargs="+", help="sub-model directories (or a language: its newest cached sub-model)")
    p.add_argument("--labels", help="comma-separated names for the table")
    p.add_argument("--png", help="write a heatmap to this file")
    p.add_argument("--cache-dir", help="cache root (default: $SUBCODER_CACHE_DIR or the user cache)")
    p.add_argument("--json", action="store_true", help="print the pairs as JSON")
    p.set_defaults(func=cmd_overlap)

    p = sub.add_parser("export", help="write a sub-model as a dense Hugging Face or a compressed-tensors directory",
                       description="Write a sub-model for other tools: by default a dense Hugging Face directory "
                                   "(pruned weights as zeros) that transformers and other tools load without subcoder; "
                                   "with --format compressed-tensors, the sparse checkpoint format vLLM serves "
                                   "(2:4 as sparse-24-bitmask, other patterns as sparse-bitmask) with a model card.")
    p.add_argument("submodel", help="sub-model directory, or a language (its newest cached sub-model)")
    p.add_argument("out", help="the directory to write (must not exist)")
    p.add_argument("--format", choices=("hf", "compressed-tensors"), default="hf",
                   help="hf: dense Hugging Face folder (default); compressed-tensors: sparse, for vLLM")
    p.add_argument("--cache-dir", help="cache root (default: $SUBCODER_CACHE_DIR or the user cache)")
    p.set_defaults(func=cmd_export)

    for name, func, text in (("serve", cmd_serve, "run the language server (stdio; --tcp HOST:PORT for debugging)"),
                             ("eval", cmd_eval, "evaluate models and sub-models per language; run the study")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("serve", "eval"):
        # argparse.REMAINDER does not capture a leading option (`subcoder eval --model M`): pass it through.
        args = parser.parse_args(argv[:1])
        args.rest = argv[1:]
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_args(args)
    except SubcoderError as exc:
        print(f"subcoder: error: {exc}", file=sys.stderr)
        return 2
    if args.command not in ("serve", "eval"):
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        _quiet_libraries(args.verbose)
    from .paths import terminate_as_interrupt

    terminate_as_interrupt()  # `kill` cleans up like Ctrl-C: no half-written folder stays
    try:
        return args.func(args)
    except SubcoderError as exc:
        print(f"subcoder: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("subcoder: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # the user gets one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"subcoder: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _quiet_libraries(verbose: int) -> None:
    if verbose:
        return
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
