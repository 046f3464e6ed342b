"""Integration on the real smollm2-135m preset (fetched and converted once into the user's cache)."""

import math

import pytest
import torch

from pruner.calibration import CalibrationSpec, build_calibration
from pruner.config import PruneConfig
from pruner.extract import extract
from pruner.generate import Completer
from pruner.models import load_model

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def submodel(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "smol-python"
    return extract("smollm2-135m", "python", PruneConfig(0.5), CalibrationSpec(n_samples=4, seq_len=256), out)


def test_exact_sparsity(submodel):
    assert submodel.report.linear_sparsity == pytest.approx(0.5, abs=1e-3)
    assert all(abs(layer["sparsity"] - 0.5) < 1e-3 for layer in submodel.report.layers)
    assert submodel.sizes["pruned_ratio"] <= 0.57


def test_finite_heldout_perplexity(submodel):
    sub = load_model(str(submodel.path))
    held = build_calibration(sub.tokenizer, "python", CalibrationSpec(n_samples=2, seq_len=256, split="heldout"))
    with torch.no_grad():
        loss = sub.model(input_ids=held.input_ids, attention_mask=held.attention_mask, labels=held.input_ids).loss
    ppl = math.exp(loss.item())
    assert math.isfinite(ppl) and 1 < ppl < 1000


def test_nonempty_completion(submodel):
    sub = load_model(str(submodel.path))
    c = Completer(sub).complete("import os\n\n\ndef list_python_files(folder):\n    ", "", max_new_tokens=16,
                                mode="multi-line")
    assert c.text.strip()
