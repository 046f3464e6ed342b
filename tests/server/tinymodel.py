"""A tiny random causal LM with a real (trained-on-the-spot) byte-level BPE tokenizer, saved as an HF dir.

Fast stand-in for a preset in tests: builds in about a second, loads like any HF checkpoint, and has
Qwen-style fill-in-the-middle tokens when asked.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]

_SAMPLE = '''
def add(a, b):
    """Return the sum."""
    return a + b


class Counter:
    def __init__(self):
        self.count = 0

    def increment(self, step=1):
        self.count += step
        return self.count

for i in range(10):
    print(i, add(i, i))

int main(void) { return 0; }
function hello(name) { console.log("hello " + name); }
'''


def make_tokenizer(fim: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIALS if fim else SPECIALS[:1]
    # An ASCII-only alphabet (byte-level names of tab, newline, space and the printable characters):
    # with all 256 bytes, a random model emits lone high bytes that decode to nothing, and the
    # completion engine rightly refuses to suggest them.
    ascii_alphabet = [chr(c) for c in range(0x21, 0x7F)] + ["\u0120", "\u010a", "\u0109"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=ascii_alphabet,
                                  limit_alphabet=len(ascii_alphabet))
    tok.train_from_iterator([_SAMPLE] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token=None)


def make_tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        # Random logits are nearly flat, so argmax would flip on rounding noise; sharpen them so
        # that equal computations in a different order (cached vs cold) give the same tokens.
        model.lm_head.weight.mul_(40.0)
    return model


def save_tiny_model(path: Path, fim: bool = True, seed: int = 0, layers: int = 2) -> Path:
    tokenizer = make_tokenizer(fim)
    model = make_tiny_model(tokenizer, seed, layers)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
