"""Tiny random causal LMs (seconds to build) with a real byte-level tokenizer, for fast exact tests.

Three architecture families, so nothing in pruner/ can quietly depend on one model's names.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "qwen2", "gpt_neox")


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is a token, plus EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(family: str, vocab_size: int = 257, tie: bool = True, heads: tuple[int, int] = (4, 2)):
    """`heads`: (attention heads, key/value heads) of the Llama and Qwen2 families; head_dim = 64 / heads."""
    from transformers import GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=heads[0],
                  vocab_size=vocab_size, max_position_embeddings=512, tie_word_embeddings=tie)
    if family == "llama":
        return LlamaConfig(num_key_value_heads=heads[1], **common)
    if family == "qwen2":
        return Qwen2Config(num_key_value_heads=heads[1], **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(**{**common, "num_attention_heads": 4})
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, dtype=torch.float32, tie: bool = True,
               heads: tuple[int, int] = (4, 2)):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tie=tie, heads=heads), dtype=dtype)
    return model.eval()


def save_tiny_model_dir(path: Path, family: str = "llama", seed: int = 0) -> Path:
    """A Hugging Face directory (safetensors + tokenizer) that `subcoder.pruner.loader.load_model` accepts."""
    model = tiny_model(family, seed, dtype=torch.bfloat16)
    model.save_pretrained(str(path))
    byte_tokenizer().save_pretrained(str(path))
    return Path(path)
