"""Extraction on a GPU: subcoder's own `prune_model` on a random Llama-7B-shaped model, against one dense
forward pass over the same calibration tokens, measured in the same process.

The model is built on the device from a config (no weights are downloaded: real 7B weights cannot travel
to a lent GPU, and the pruning's cost does not depend on the values). Wanda runs each decoder layer twice
(observe the inputs, then forward the pruned layer), so the floor is about 2x a dense forward.

    python benchmarks/gpu_extraction.py [--layers 32] [--hidden 4096] [--ffn 11008]
                                        [--samples 128] [--seq-len 2048] [--batch-size 8] [--runs u50,2:4,offload]

A model larger than the GPU, from disk (two processes, so the second one's peak host memory is its own):

    python benchmarks/gpu_extraction.py --write-checkpoint DIR [--shard-size 2GB]   # random, sharded safetensors
    subcoder prune DIR --device cuda --offload --out SUB --json    # streams one layer at a time
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from subcoder.pruner.config import PruneConfig
from subcoder.pruner.prune import decoder_layers, prune_model
from subcoder.pruner.units import human_bytes

RUNS = {  # name -> (config, offload, label)
    "u50": (PruneConfig(0.5), False, "50% unstructured, model on the GPU"),
    "2:4": (PruneConfig(0.5, "2:4"), False, "2:4, model on the GPU"),
    "offload": (PruneConfig(0.5), True, "50%, offload (model on the CPU, one layer on the GPU)"),
}


def build_model(args):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 128, num_key_value_heads=args.hidden // 128,
                         vocab_size=32000, max_position_embeddings=max(4096, args.seq_len))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


@torch.no_grad()
def reinit(model, seed: int) -> None:
    """Fresh random decoder weights, so no run sees the zeros a previous one left (ties would change the work)."""
    torch.manual_seed(seed)
    for layer in decoder_layers(model)[1]:
        for p in layer.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)


def write_checkpoint(args) -> int:
    """A random checkpoint of the benchmark's shape in several safetensors files, with a byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = build_model(args)
    model.save_pretrained(args.write_checkpoint, max_shard_size=args.shard_size)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(args.write_checkpoint)
    print(f"wrote {args.write_checkpoint}")
    return 0


def add_breakdown(totals: dict) -> None:
    """Time the phases of a prune (device-synchronised around each call, so it slows the run a little)."""
    import subcoder.pruner.prune as prune

    for name in ("_observe", "mask_from_scores", "apply_mask", "capture_first_layer_inputs"):
        inner = getattr(prune, name)

        def timed(*a, _inner=inner, _name=name, **kw):
            t0 = sync()
            out = _inner(*a, **kw)
            totals[_name] = totals.get(_name, 0.0) + sync() - t0
            return out
        setattr(prune, name, timed)


def sync() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


@torch.no_grad()
def dense_forward(model, ids, mask, batch_size: int) -> float:
    model(input_ids=ids[:1, :64].cuda(), use_cache=False)  # warm-up: kernels chosen, allocator primed
    t0 = sync()
    for start in range(0, ids.shape[0], batch_size):
        model(input_ids=ids[start:start + batch_size].cuda(), attention_mask=mask[start:start + batch_size].cuda(),
              use_cache=False)
    return sync() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--runs", default="u50,2:4,offload", help=f"comma-separated, of {', '.join(RUNS)}")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--write-checkpoint", metavar="DIR", help="only write a random sharded checkpoint of this shape")
    ap.add_argument("--shard-size", default="2GB")
    ap.add_argument("--breakdown", action="store_true", help="also time each phase (synchronised: a slower run)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_extraction: no CUDA device here", file=sys.stderr)
        return 2
    if args.write_checkpoint:
        return write_checkpoint(args)
    runs = args.runs.split(",")
    if unknown := [r for r in runs if r not in RUNS]:
        print(f"gpu_extraction: unknown run {unknown[0]!r}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2

    model = build_model(args)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.samples, args.seq_len), generator=g)
    mask = torch.ones_like(ids)
    dense = dense_forward(model, ids, mask, args.batch_size)
    rows = []
    totals: dict = {}
    if args.breakdown:
        add_breakdown(totals)
    for i, name in enumerate(runs):
        config, offload, label = RUNS[name]
        reinit(model, seed=i)
        if offload:
            model.to("cpu")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = sync()
        result = prune_model(model, ids, mask, config, batch_size=args.batch_size, offload=offload)
        seconds = sync() - t0
        rows.append({"run": name, "label": label, "seconds": round(seconds, 2), "ratio": round(seconds / dense, 2),
                     "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()),
                     "sparsity": round(result.report.linear_sparsity, 4)})
        if totals:
            print(f"{name} phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in totals.items()))
            totals.clear()
        del result
        if offload:
            model.to("cuda")

    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; {args.layers} layers, hidden "
          f"{args.hidden}, FFN {args.ffn}, bf16; {args.samples} x {args.seq_len} tokens, batch {args.batch_size}")
    print(f"| run | time | vs one dense forward ({dense:.2f} s) | peak GPU memory |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['seconds']:.1f} s | {r['ratio']:.2f}x | {human_bytes(r['peak_gpu_bytes'])} |")
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak host memory of the process: {human_bytes(host)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"dense_seconds": round(dense, 2), "runs": rows, "args": vars(args)}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
