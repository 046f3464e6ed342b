"""End-to-end greedy decoding of a sub-model: dense bf16 PyTorch, the sparse CPU kernel, the dense base
model on the same engine, llama.cpp.

    python benchmarks/decode.py [--model qwen2.5-coder-0.5b] [--language python] [--tokens 64]
                                [--threads 2] [--rounds 3] [--no-llama] [--engines LIST]
                                [--write docs/PERFORMANCE.md]

The sub-model is the preset's 50% Wanda sub-model for `--language`, built with the defaults of
`subcoder prune` (or taken from the cache). It is timed these ways in one run:

  dense   -- the same sub-model with its pruned weights expanded to dense bf16 and run by eager
             PyTorch (exactly as fast as the unpruned base model: zeros cost what any weight costs)
  sparse  -- the pruned linears on the sparse kernel (packed mask + values, no dense copy), lm_head
             on the dense bf16 matvec kernel, each token through the lean decode step
             (subcoder.pruner.kernels.decode_step: the layer stack as one C++ call) on the growing KV cache
             (subcoder.pruner.engine.kvcache). Also shown through the model's own forward, so the kernel's and
             the step's gains read apart
  greedy-head -- the same step, the next token found by subcoder.pruner.kernels.greedy_head (an int8 copy
             of lm_head screens the vocabulary, the few rows that can win are recomputed exactly:
             the same argmax without reading the bf16 lm_head)
  speculative -- the same step and head plus drafts looked up in the context and verified several tokens
             per pass (subcoder.pruner.engine.speculate), exactly what `subcoder generate` and the server run;
             the same greedy tokens
  dense-engine -- the fair baseline: the dense *base* model (not pruned) on the same engine, its
             linears on the kernel's dense bf16 matvec (as subcoder.pruner.loader loads a dense model),
             the same fused step and greedy head; compare it with greedy-head
  dense-engine-speculative -- the same plus the same drafts; compare it with speculative (the two
             models' greedy tokens differ, so the drafts meet different token streams: the pass counts
             are printed; the editor replay of benchmarks/server_latency.py is the like-for-like test)
  llama   -- llama.cpp (llama-cpp-python) on the preset's own GGUF (quantized, not pruned), the
             engine most local-completion extensions use; skipped when it is not installed

`--engines dense-engine,greedy-head,...` times only those (the sub-model on the kernel is always loaded;
the eager dense copy only when `dense` or nothing is named), for models whose copies would not fit together.

Engines take turns round by round. For each: prefill of a short (~80 token) and a long (~1,000 token) code prompt, and greedy decode
ms/token after the short one (KV cache on, batch 1), median of --rounds. The dense and sparse paths
must pick the same greedy tokens (counted); resident bytes of the pruned layers and the whole model
are reported from the tensors themselves.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROMPT = '''import json
from pathlib import Path


def load_settings(path: Path) -> dict:
    """Read a JSON settings file, returning defaults for missing keys."""
    defaults = {"indent": 4, "line_length": 100, "quote": "double"}
    if not path.exists():
        return dict(defaults)
    with path.open() as fh:
        data = json.load(fh)
'''


def long_prompt(tokenizer, language: str, target: int = 1000) -> list[int]:
    """About `target` tokens of held-out code in the sub-model's language (never calibration data)."""
    from subcoder.pruner.calibration import corpus_documents

    ids: list[int] = []
    for doc in corpus_documents(language, "heldout"):
        ids += tokenizer(doc["text"]).input_ids
        if len(ids) >= target:
            break
    return ids[:target]


def _cache_arg(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def torch_round(model, short_ids: list[int], long_ids: list[int], new_tokens: int, fast=None,
                greedy_head: bool = False) -> dict:
    """One round: long prefill, short prefill, then greedy decode (through `fast.step` when given,
    or with `greedy_head` through `fast.next_tokens`, which finds the argmax without every logit)."""
    from transformers import DynamicCache

    from subcoder.pruner.engine.kvcache import new_cache

    arg = _cache_arg(model)
    t0 = time.perf_counter()
    model(input_ids=torch.tensor([long_ids]), use_cache=False, logits_to_keep=1)
    pre_long = time.perf_counter() - t0
    # the lean step runs with the cache the Completer gives it; the model's own forward with its own
    cache = new_cache(model.config) if fast is not None else DynamicCache()
    t0 = time.perf_counter()
    logits = model(input_ids=torch.tensor([short_ids]), use_cache=True, logits_to_keep=1, **{arg: cache}).logits[0, -1]
    pre_short = time.perf_counter() - t0
    ids = [int(logits.argmax())]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        if fast is not None and greedy_head:
            ids.append(fast.next_tokens([ids[-1]], cache)[0])
            continue
        if fast is not None:
            logits = fast.step(ids[-1], cache)
        else:
            logits = model(input_ids=torch.tensor([[ids[-1]]]), use_cache=True, logits_to_keep=1,
                           **{arg: cache}).logits[0, -1]
        ids.append(int(logits.argmax()))
    per_token = (time.perf_counter() - t0) / max(1, new_tokens - 1)
    return {"prefill_short_s": pre_short, "prefill_long_s": pre_long, "ms_per_token": per_token * 1e3, "ids": ids}


@torch.no_grad()
def speculative_round(model, fast, short_ids: list[int], long_ids: list[int], new_tokens: int) -> dict:
    """As `torch_round` with the lean step, decoding through `subcoder.pruner.engine.speculate.Decoding` with drafts
    looked up in the prompt and the text so far -- the Completer's decode loop, without stop rules."""
    from subcoder.pruner.engine.completer import crop_cache
    from subcoder.pruner.engine.kvcache import new_cache
    from subcoder.pruner.engine.speculate import Decoding, PromptLookup

    arg = _cache_arg(model)
    t0 = time.perf_counter()
    model(input_ids=torch.tensor([long_ids]), use_cache=False, logits_to_keep=1)
    pre_long = time.perf_counter() - t0
    cache = new_cache(model.config)
    t0 = time.perf_counter()
    logits = model(input_ids=torch.tensor([short_ids]), use_cache=True, logits_to_keep=1, **{arg: cache}).logits[0, -1]
    pre_short = time.perf_counter() - t0
    fed = list(short_ids)
    decoding = Decoding(int(logits.argmax()), step=lambda t: fast.next_tokens([t], cache)[0], fed=fed,
                        budget=new_tokens, verify=lambda toks: fast.next_tokens(toks, cache),
                        crop=lambda n: crop_cache(cache, n), lookup=PromptLookup(short_ids))
    ids: list[int] = []
    t0 = time.perf_counter()
    for token in decoding.tokens():
        ids.append(token)
        if len(ids) >= new_tokens:
            break
    per_token = (time.perf_counter() - t0) / max(1, new_tokens - 1)
    return {"prefill_short_s": pre_short, "prefill_long_s": pre_long, "ms_per_token": per_token * 1e3, "ids": ids,
            "passes": decoding.passes}


class LlamaEngine:
    def __init__(self, gguf: Path, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                         verbose=False)

    def round(self, short_ids: list[int], long_ids: list[int], new_tokens: int) -> dict:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(long_ids)
        pre_long = time.perf_counter() - t0
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(short_ids)
        pre_short = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([llm.sample(top_k=1, temp=0.0)])
        per_token = (time.perf_counter() - t0) / max(1, new_tokens - 1)
        return {"prefill_short_s": pre_short, "prefill_long_s": pre_long, "ms_per_token": per_token * 1e3}


def median_of(rounds: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in rounds) for k in ("prefill_short_s", "prefill_long_s", "ms_per_token")}
    for key in ("ids", "passes"):
        if key in rounds[0]:
            out[key] = rounds[-1][key]
    return out


def submodel_dir(model: str, language: str) -> Path:
    """The cached sub-model `subcoder prune -M model -l language` builds (built now if missing)."""
    from subcoder.pruner.calibration import CalibrationSpec
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.extract import extract

    return extract(model, language, PruneConfig(), CalibrationSpec(), dtype="auto").path


def pruned_bytes(model) -> tuple[int, int]:
    """(bytes of the pruned linears as they sit in memory, bytes of every tensor, shared counted once)."""
    from subcoder.pruner.kernels import SparseLinear, model_bytes

    layers = sum(m.nbytes() for m in model.modules() if isinstance(m, SparseLinear))
    return layers, model_bytes(model)


def dense_pruned_bytes(model, names: list[str]) -> int:
    total = 0
    for n in names:
        m = model.get_submodule(n)
        total += m.weight.numel() * m.weight.element_size()
        if m.bias is not None:
            total += m.bias.numel() * m.bias.element_size()
    return total


ENGINES = ("dense", "sparse-forward", "sparse", "greedy-head", "speculative", "dense-engine",
           "dense-engine-speculative", "llama")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a preset (default: the default preset)")
    ap.add_argument("--language", default="python")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens decoded after the short prompt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-llama", action="store_true", help="leave out the llama.cpp column")
    ap.add_argument("--engines", help="comma-separated engines to time (default: all of " + ", ".join(ENGINES) + ")")
    ap.add_argument("--write", metavar="MD", help="replace the 'End-to-end decode' section of this markdown file")
    args = ap.parse_args(argv)

    from subcoder.pruner import kernels as sparse
    from subcoder.pruner.loader import load_model

    torch.set_num_threads(args.threads)
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    ok, reason = sparse.kernel_available()
    print(f"kernel: {reason}", flush=True)
    wanted = [e.strip() for e in (args.engines or ",".join(ENGINES)).split(",") if e.strip()]
    unknown = set(wanted) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engine(s) {', '.join(sorted(unknown))}; choose among {', '.join(ENGINES)}")
    if args.no_llama and "llama" in wanted:
        wanted.remove("llama")
    path = submodel_dir(args.model, args.language)
    from subcoder.pruner.engine.options import EngineOptions
    from subcoder.pruner.errors import ModelError

    try:
        fast_model = load_model(str(path), dtype="bfloat16", sparse=True)
    except ModelError as exc:
        print(f"{exc}; nothing to compare", file=sys.stderr)
        return 1
    tok = fast_model.tokenizer
    short_ids = tok(PROMPT).input_ids
    long_ids = long_prompt(tok, args.language)
    print(f"sub-model {path.name}: prompts {len(short_ids)} and {len(long_ids)} tokens, {args.tokens} new tokens, "
          f"{args.threads} threads", flush=True)
    from subcoder.pruner.kernels.decode_step import FastDecoder

    step = FastDecoder.for_model(fast_model.model)
    layer_bytes, model_bytes = pruned_bytes(fast_model.model)
    names = [n for n, m in fast_model.model.named_modules() if isinstance(m, sparse.SparseLinear)]
    dense = None
    if "dense" in wanted:
        dense = load_model(str(path), dtype="bfloat16", sparse=False, options=EngineOptions(dense_kernel=False))
    base = base_step = None
    if any(e.startswith("dense-engine") for e in wanted):
        # the base model as load_model gives it to the Completer: linears on the dense bf16 kernel
        base = load_model(args.model, dtype="bfloat16")
        base_step = FastDecoder.for_model(base.model)

    engines = {}
    if dense is not None:
        engines["dense"] = lambda: torch_round(dense.model, short_ids, long_ids, args.tokens)
    if "sparse-forward" in wanted:
        engines["sparse-forward"] = lambda: torch_round(fast_model.model, short_ids, long_ids, args.tokens)
    if step is not None:
        if "sparse" in wanted:
            engines["sparse"] = lambda: torch_round(fast_model.model, short_ids, long_ids, args.tokens, fast=step)
        if step.head.screened and "greedy-head" in wanted:
            engines["greedy-head"] = lambda: torch_round(fast_model.model, short_ids, long_ids, args.tokens,
                                                         fast=step, greedy_head=True)
        if step.fused and "speculative" in wanted:
            engines["speculative"] = lambda: speculative_round(fast_model.model, step, short_ids, long_ids, args.tokens)
    elif "sparse" in wanted:
        engines["sparse"] = lambda: torch_round(fast_model.model, short_ids, long_ids, args.tokens)
    if base_step is not None:
        if "dense-engine" in wanted:
            engines["dense-engine"] = lambda: torch_round(base.model, short_ids, long_ids, args.tokens, fast=base_step,
                                                          greedy_head=base_step.head.screened)
        if base_step.fused and "dense-engine-speculative" in wanted:
            engines["dense-engine-speculative"] = lambda: speculative_round(base.model, base_step, short_ids, long_ids,
                                                                            args.tokens)
    llama_note = ""
    if "llama" in wanted:
        try:
            import llama_cpp  # noqa: F401

            from server_latency import preset_gguf

            llama = LlamaEngine(preset_gguf(args.model), args.threads)
            engines["llama"] = lambda: llama.round(short_ids, long_ids, args.tokens)
        except ImportError as exc:
            llama_note = f"llama.cpp column skipped: llama-cpp-python is not installed ({exc})"
            print(llama_note, file=sys.stderr)
    # Engines take turns round by round, so that load from other processes (memory bandwidth
    # above all) hits them alike; the figures are medians over rounds.
    per_engine: dict[str, list[dict]] = {k: [] for k in engines}
    for r in range(args.rounds):
        for key, run in engines.items():
            per_engine[key].append(run())
            print(f"round {r + 1}/{args.rounds} {key:24s}: {per_engine[key][-1]['ms_per_token']:.1f} ms/token",
                  flush=True)
    results = {k: median_of(v) for k, v in per_engine.items()}

    ref_key = next((k for k in ("dense", "dense-engine", *results) if k in results), None)
    if ref_key is None:
        print("no engine could run", file=sys.stderr)
        return 1
    ref = results[ref_key]
    d, s = results.get("dense"), results.get("sparse")
    dense_copy = dense if dense is not None else base
    dense_layers = dense_pruned_bytes(dense_copy.model, names) if dense_copy is not None else 0
    dense_model = sparse.model_bytes(dense_copy.model) if dense_copy is not None else 0
    mib = 1024 * 1024
    lines = [
        f"Sub-model `{path.name}` ({args.model}, {args.language}, 50% unstructured Wanda); prompts of "
        f"{len(short_ids)} and {len(long_ids)} tokens; {args.tokens} greedy tokens; {args.threads} threads; "
        f"median of {args.rounds} rounds. Kernel: {reason.split(' kernel from')[0]}. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"load average {load_before} before, {' / '.join(f'{x:.2f}' for x in os.getloadavg())} after.",
        "",
        f"| engine | prefill short | prefill long | decode ms/token | decode vs {ref_key} |",
        "|---|---:|---:|---:|---:|",
    ]
    names_ = {"dense": "dense bf16, eager PyTorch", "sparse-forward": "sparse kernel, model's own forward",
              "sparse": "sparse kernel + fused decode step",
              "greedy-head": "+ greedy head (int8 screen of lm_head, exact argmax)",
              "speculative": "+ drafts from the context, verified in one pass (subcoder)",
              "dense-engine": "dense base model, same engine: dense bf16 kernel + fused step + greedy head",
              "dense-engine-speculative": "dense base model, same engine + drafts",
              "llama": "llama.cpp, same model's GGUF (quantized)"}
    for key, r in results.items():
        lines.append(f"| {names_[key]} | {r['prefill_short_s'] * 1e3:.0f} ms | {r['prefill_long_s'] * 1e3:.0f} ms | "
                     f"{r['ms_per_token']:.1f} | {ref['ms_per_token'] / r['ms_per_token']:.2f}x |")
    lines.append("")
    if d is not None and s is not None:
        lines.append(f"Greedy tokens, sparse vs dense: {sum(a == b for a, b in zip(d['ids'], s['ids']))}/{len(d['ids'])} "
                     f"identical.")
    if dense_layers:
        lines.append(f"Pruned linears in memory: {dense_layers / mib:.1f} MiB dense bf16 -> {layer_bytes / mib:.1f} MiB "
                     f"packed ({layer_bytes / dense_layers:.3f}x); whole model {dense_model / mib:.1f} -> "
                     f"{model_bytes / mib:.1f} MiB ({model_bytes / dense_model:.3f}x; embeddings and lm_head stay dense).")
    if "greedy-head" in results and s is not None:
        gh = results["greedy-head"]
        lines.append(f"Greedy head: tokens vs the fused step's full logits {sum(a == b for a, b in zip(s['ids'], gh['ids']))}"
                     f"/{len(s['ids'])} identical; its int8 copy of lm_head adds "
                     f"{step.head.rows.nbytes / mib:.0f} MiB.")
    if "speculative" in results:
        sp = results["speculative"]
        versus = (f"greedy tokens vs dense {sum(a == b for a, b in zip(d['ids'], sp['ids']))}/{len(d['ids'])} identical"
                  if d is not None else "")
        if s is not None:
            versus += (", " if versus else "") + (f"vs the plain sparse step "
                                                  f"{sum(a == b for a, b in zip(s['ids'], sp['ids']))}/{len(s['ids'])}")
        lines.append(f"Speculative decoding: {len(sp['ids'])} tokens in {sp['passes']} passes over the weights"
                     f"{'; ' + versus if versus else ''}. How much it saves depends on "
                     f"the text: this prompt is a short function, the editor replay (Completion latency) is the "
                     f"measure that counts.")
    same_engine = []
    if "dense-engine" in results and "greedy-head" in results:
        de, gh = results["dense-engine"], results["greedy-head"]
        same_engine.append(f"without drafts {de['ms_per_token']:.1f} vs {gh['ms_per_token']:.1f} ms/token, "
                           f"**{de['ms_per_token'] / gh['ms_per_token']:.2f}x** for the sub-model (long prefill "
                           f"{de['prefill_long_s'] / gh['prefill_long_s']:.2f}x)")
    if "dense-engine-speculative" in results and "speculative" in results:
        ds, sp = results["dense-engine-speculative"], results["speculative"]
        same_engine.append(f"with drafts {ds['ms_per_token']:.1f} vs {sp['ms_per_token']:.1f} ms/token, "
                           f"{ds['ms_per_token'] / sp['ms_per_token']:.2f}x ({len(ds['ids'])} dense tokens in "
                           f"{ds['passes']} passes, {len(sp['ids'])} sub-model tokens in {sp['passes']}: different "
                           f"token streams, so this ratio mixes the kernel with how well each model's text drafts)")
    if same_engine:
        lines.append("Pruned vs dense on the same engine (dense base model, linears on the dense bf16 kernel): "
                     + "; ".join(same_engine) + ".")
    if "llama" in results and s is not None:
        ll = results["llama"]
        lines.append(f"Sparse vs llama.cpp: decode {s['ms_per_token'] / ll['ms_per_token']:.2f}x its ms/token; "
                     f"long prefill {ll['prefill_long_s'] / s['prefill_long_s']:.2f}x faster than llama.cpp.")
    elif llama_note:
        lines.append(llama_note + ".")
    if d is not None and s is not None:
        lines.append(f"Sparse vs dense: decode {d['ms_per_token'] / s['ms_per_token']:.2f}x faster, long prefill "
                     f"{d['prefill_long_s'] / s['prefill_long_s']:.2f}x, short prefill "
                     f"{d['prefill_short_s'] / s['prefill_short_s']:.2f}x.")
    print("\n".join(lines))
    if args.write:
        write_section(Path(args.write), lines, argv)
    return 0


BEGIN, END = "<!-- decode:begin (generated by benchmarks/decode.py) -->", "<!-- decode:end -->"
SECTION = "## End-to-end decode"


def write_section(path: Path, lines: list[str], argv) -> None:
    from _report import write_block

    cmd = ("python benchmarks/decode.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    write_block(path, SECTION, BEGIN, END, [f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')})", "", *lines])


if __name__ == "__main__":
    sys.exit(main())
