"""Writes a tiny random causal LM (HF directory) for the VS Code end-to-end test.

Reuses the server tests' maker (tests/server/tinymodel.py): a 2-layer Llama with a real BPE
tokenizer and fill-in-the-middle tokens, built in about a second.
Usage: python make_tiny_model.py OUT_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "server"))

from tinymodel import save_tiny_model  # noqa: E402

if __name__ == "__main__":
    save_tiny_model(Path(sys.argv[1]))
    print(f"tiny model in {sys.argv[1]}")
