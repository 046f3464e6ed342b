"""End-to-end greedy decoding speed: dense bf16 torch against the sparse CPU kernel.

    python benchmarks/decode.py [--model qwen2.5-coder-0.5b] [--sparsity 0.5] [--tokens 64] [--threads 2]

Loads the base model (bf16), times prefill of a fixed code prompt and greedy decoding with the KV
cache, then prunes every decoder linear layer by weight magnitude (per row, the same layout a
Wanda sub-model has; the speed does not depend on which weights are kept), swaps them for
SparseLinear (lm_head: DenseBF16Linear, tied to the embedding) and times the same again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


@torch.no_grad()
def time_decode(model, input_ids, new_tokens: int, rounds: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tokens per second, generated ids): median over rounds."""
    prefill, per_token, ids = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        ids = [int(tok)]
        t2 = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            ids.append(int(tok))
        t3 = time.perf_counter()
        prefill.append(t1 - t0)
        per_token.append((t3 - t2) / max(1, new_tokens - 1))
    return statistics.median(prefill), 1.0 / statistics.median(per_token), ids


def magnitude_masks(model, sparsity: float) -> dict[str, torch.Tensor]:
    masks = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name != "lm_head" and ".layers." in f".{name}":
            w = mod.weight.detach().float().abs()
            k = int(round(sparsity * w.shape[1]))
            drop = w.argsort(dim=1, stable=True)[:, :k]
            keep = torch.ones_like(w, dtype=torch.bool)
            keep.scatter_(1, drop, False)
            masks[name] = keep
    return masks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from pruner import sparse
    from pruner.models import load_model

    torch.set_num_threads(args.threads)
    ok, reason = sparse.kernel_available()
    print(f"kernel: {reason}")
    loaded = load_model(args.model, dtype="bfloat16")
    model, tok = loaded.model.eval(), loaded.tokenizer
    input_ids = tok(PROMPT, return_tensors="pt").input_ids
    print(f"model {args.model}, prompt {input_ids.shape[1]} tokens, {args.tokens} new tokens, {args.threads} threads")

    masks = magnitude_masks(model, args.sparsity)
    with torch.no_grad():  # the dense reference is the same pruned model, so outputs must agree
        for name, keep in masks.items():
            model.get_submodule(name).weight.mul_(keep)
    pre_d, tps_d, ids_d = time_decode(model, input_ids, args.tokens, args.rounds)
    print(f"dense torch bf16 : prefill {pre_d * 1e3:8.1f} ms   decode {tps_d:6.2f} tok/s")

    report = sparse.sparsify(model, masks)
    print(f"sparsify: {report.summary()}")
    pre_s, tps_s, ids_s = time_decode(model, input_ids, args.tokens, args.rounds)
    print(f"sparse kernel    : prefill {pre_s * 1e3:8.1f} ms   decode {tps_s:6.2f} tok/s")
    same = sum(a == b for a, b in zip(ids_d, ids_s))
    print(f"speed-up: decode {tps_s / tps_d:.2f}x, prefill {pre_d / pre_s:.2f}x; "
          f"greedy tokens identical for {same}/{len(ids_d)}")
    print("sample:", repr(tok.decode(ids_s[:40])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
