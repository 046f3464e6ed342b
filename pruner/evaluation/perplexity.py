"""Held-out perplexity: token windows of the *held-out* corpus split (never the calibration split).

Documents are shuffled with the seed, tokenized, joined by the EOS token into one stream (as the
calibration windows are) and cut into `n_windows` windows of `seq_len` tokens; the last may be
shorter and is padded. Perplexity is exp(mean negative log-likelihood) over real predicted tokens:
padded positions carry no loss and no weight.

`file_windows` and `window_losses` are the frontier's version, built for intervals: windows cut
from each file on its own (never across two files), taken round-robin over every held-out file, and
each window's loss kept with its file, so a bootstrap can resample files.
"""

from __future__ import annotations

import math
import random

import torch


def heldout_windows(tokenizer, language: str, *, n_windows: int = 16, seq_len: int = 512, seed: int = 0) -> list[list[int]]:
    from subcoder.pruner.calibration import corpus_documents

    docs = corpus_documents(language, "heldout")
    order = list(range(len(docs)))
    random.Random(f"ppl:{seed}:{language}").shuffle(order)
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    need = n_windows * seq_len
    for i in order:
        stream.extend(tokenizer(docs[i]["text"], add_special_tokens=False)["input_ids"])
        stream.extend(sep)
        if len(stream) >= need:
            break
    windows = [stream[i:i + seq_len] for i in range(0, min(len(stream), need), seq_len)]
    return [w for w in windows if len(w) >= 2]


def file_windows(tokenizer, language: str, *, n_windows: int | None = None, seq_len: int = 512, seed: int = 0,
                 documents: list[dict] | None = None) -> list[dict]:
    """Windows of up to `seq_len` tokens, each from one file ({file, ids}); one per file per round
    over the shuffled files until `n_windows` (None: all of them). A file's last window may be short;
    windows under 32 tokens are dropped (they would weigh little and say less)."""
    if documents is None:
        from subcoder.pruner.calibration import corpus_documents

        documents = corpus_documents(language, "heldout")
    order = list(range(len(documents)))
    random.Random(f"ppl-files:{seed}:{language}").shuffle(order)
    per_file = []
    for i in order:
        ids = tokenizer(documents[i]["text"], add_special_tokens=False)["input_ids"]
        cuts = [ids[s:s + seq_len] for s in range(0, len(ids), seq_len)]
        per_file.append([{"file": f"{documents[i]['package']}:{documents[i]['path']}", "ids": w}
                         for w in cuts if len(w) >= 32])
    out: list[dict] = []
    for rnd in range(max((len(w) for w in per_file), default=0)):
        for windows in per_file:
            if n_windows is not None and len(out) >= n_windows:
                return out
            if rnd < len(windows):
                out.append(windows[rnd])
    return out


@torch.inference_mode()
def window_losses(model, windows: list[list[int]], *, batch_size: int = 4, pad_id: int = 0,
                  bar=None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, predicted tokens) per window, over right-padded batches."""
    out: list[tuple[float, int]] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, w in enumerate(chunk):
            ids[r, :len(w)] = torch.tensor(w)
            mask[r, :len(w)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        valid = mask[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                   reduction="none").view_as(targets)
        sums = (losses * valid).sum(dim=1)
        out.extend((float(s), int(c)) for s, c in zip(sums, valid.sum(dim=1)))
        if bar is not None:
            bar(len(chunk))
    return out


def nll_sum(model, windows: list[list[int]], *, batch_size: int = 4, pad_id: int = 0, bar=None) -> tuple[float, int]:
    """(summed negative log-likelihood, number of predicted tokens) over right-padded batches."""
    per = window_losses(model, windows, batch_size=batch_size, pad_id=pad_id, bar=bar)
    return sum(s for s, _ in per), sum(c for _, c in per)


def perplexity(loaded, language: str, *, n_windows: int = 16, seq_len: int = 512, seed: int = 0, batch_size: int = 4,
               bar=None) -> dict:
    tok = loaded.tokenizer
    windows = heldout_windows(tok, language, n_windows=n_windows, seq_len=seq_len, seed=seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    total, count = nll_sum(loaded.model, windows, batch_size=batch_size, pad_id=pad, bar=bar)
    return {"perplexity": math.exp(total / count) if count else None, "nll": total / count if count else None,
            "tokens": count, "windows": len(windows), "seq_len": seq_len}
