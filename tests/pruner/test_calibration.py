"""Calibration sets: the stream sampler stays as it was (its fingerprints key cached sub-models), the
files sampler takes one window per file across packages, FIM windows carry the model's FIM tokens in
both layouts, and the study's sources (mixed code, literature) load. Real shipped corpora and real
tokenizers (the tiny ones the other tests use); nothing is mocked."""

import random

import pytest
from tiny_models import byte_tokenizer
from tinymodel import make_tokenizer

from subcoder.pruner import calibration
from subcoder.pruner.calibration import (CalibrationSpec, build_calibration, fim_layout, fim_plan, sample_file_windows,
                                         stratified_order)
from subcoder.pruner.engine.prompt import PromptBuilder
from subcoder.pruner.errors import ConfigError
from subcoder.pruner.loaded import detect_fim

# The default spec's fingerprint for Python on the byte tokenizer. The lead's evaluations look sub-models up
# by such fingerprints: a change here must be a deliberate one (a new default, or rebuilt corpora).
DEFAULT_PYTHON_FINGERPRINT = "4de4857315017c29"


@pytest.fixture(scope="module")
def fim_tok():
    return make_tokenizer(fim=True)


def test_default_spec_is_the_stream_sampler_with_its_fingerprint():
    spec = CalibrationSpec()
    assert (spec.sampling, spec.fim, spec.n_samples, spec.seq_len) == ("stream", 0.0, 32, 512)
    assert build_calibration(byte_tokenizer(), "python").fingerprint == DEFAULT_PYTHON_FINGERPRINT


def test_stratified_order_takes_one_file_per_package_per_round():
    packages = ["big"] * 10 + ["a", "a", "b", "c"]
    order = stratified_order(packages, random.Random(0))
    assert sorted(order) == list(range(len(packages)))  # every file exactly once
    first_round = {packages[i] for i in order[:4]}
    assert first_round == {"big", "a", "b", "c"}  # the big package does not crowd the others out
    assert {packages[i] for i in order[4:6]} == {"big", "a"}
    assert order == stratified_order(packages, random.Random(0))
    assert order != stratified_order(packages, random.Random(1))


def _files(lengths, packages=None):
    data = [[1000 * f + t for t in range(n)] for f, n in enumerate(lengths)]
    return data, packages or [f"p{f % 3}" for f in range(len(lengths))]


def test_one_window_per_file_at_a_random_offset():
    data, packages = _files([300] * 12)
    windows, used = sample_file_windows(data.__getitem__, packages, 8, 64, random.Random(0), sep=[-1])
    assert len(windows) == 8 and len(used) == 8 and all(len(w) == 64 for w in windows)
    owners = [w[0] // 1000 for w in windows]
    assert len(set(owners)) == 8  # eight different files
    assert all(all(t // 1000 == w[0] // 1000 for t in w) for w in windows)  # each window inside one file
    assert len({w[0] % 1000 for w in windows}) > 1  # offsets vary
    again, _ = sample_file_windows(data.__getitem__, packages, 8, 64, random.Random(0), sep=[-1])
    assert again == windows


def test_short_files_are_joined_and_files_reused_only_when_all_are_drawn():
    data, packages = _files([20, 20, 20, 20, 20])
    windows, used = sample_file_windows(data.__getitem__, packages, 2, 50, random.Random(0), sep=[-1])
    assert all(len(w) == 50 for w in windows) and windows[0].count(-1) == 2  # three files joined, EOS between
    assert len(used) == 5
    data, packages = _files([100, 100])
    windows, used = sample_file_windows(data.__getitem__, packages, 4, 50, random.Random(0), sep=[-1])
    owners = [w[0] // 1000 for w in windows]
    assert sorted(owners[:2]) == [0, 1] and sorted(owners[2:]) == [0, 1]


def test_fim_plan_spreads_and_alternates_layouts():
    assert fim_plan(4, 0.0) == [None] * 4
    assert fim_plan(4, 1.0) == ["psm", "spm", "psm", "spm"]
    plan = fim_plan(10, 0.5)
    assert plan.count("psm") == plan.count("spm") == 3 or sum(p is not None for p in plan) == 5
    assert sum(p is not None for p in plan) == 5 and plan[0] is None and plan[1] == "psm"


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_fim_layout_is_the_servers(fim_tok, order):
    builder = PromptBuilder(fim_tok, detect_fim(fim_tok), context_tokens=512, order=order)
    prefix, suffix, middle = "def add(a, b):\n    ", "\n\nclass Counter:\n", "return a + b"
    ids = builder.build(prefix, suffix).ids
    pieces = [builder.encode(t) for t in (prefix, middle, suffix)]
    assert fim_layout(pieces[0], pieces[1], pieces[2], builder.fim_ids, order) == [*ids, *pieces[1]]


def test_fim_windows_carry_the_fim_tokens_in_both_layouts(fim_tok):
    spec = CalibrationSpec(sampling="files", fim=1.0, n_samples=4, seq_len=128)
    calib = build_calibration(fim_tok, "python", spec)
    p, s, m = PromptBuilder(fim_tok, detect_fim(fim_tok)).fim_ids
    rows = calib.input_ids.tolist()
    assert [row[0] for row in rows] == [p, s, p, s]  # PSM, SPM, PSM, SPM
    for row in rows:
        assert row.count(p) == row.count(s) == row.count(m) == 1
        assert row.index(m) < len(row) - 1  # a middle follows
    assert "4 FIM" in calib.description
    half = build_calibration(fim_tok, "python", CalibrationSpec(sampling="files", fim=0.5, n_samples=4, seq_len=128))
    assert sum(row[0] in (p, s) for row in half.input_ids.tolist()) == 2


def test_fim_needs_fim_tokens_and_the_files_sampler():
    with pytest.raises(ConfigError, match="fill-in-the-middle"):
        build_calibration(byte_tokenizer(), "python", CalibrationSpec(sampling="files", fim=0.25, n_samples=4, seq_len=64))
    with pytest.raises(ConfigError, match="files"):
        CalibrationSpec(fim=0.25)
    with pytest.raises(ConfigError, match="sampling"):
        CalibrationSpec(sampling="shuffle")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        CalibrationSpec(sampling="files", fim=1.5)


def test_files_sampling_is_deterministic_and_spans_files_and_packages():
    tok = byte_tokenizer()
    spec = CalibrationSpec(sampling="files", n_samples=16, seq_len=256)
    a, b = build_calibration(tok, "java", spec), build_calibration(tok, "java", spec)
    assert a.fingerprint == b.fingerprint and a.input_ids.shape == (16, 256)
    assert build_calibration(tok, "java", CalibrationSpec(sampling="files", n_samples=16, seq_len=256, seed=1)).fingerprint != a.fingerprint
    assert "16 windows from 16 shipped java files" in a.description and "one per file" in a.description
    stream = build_calibration(tok, "java", CalibrationSpec(n_samples=16, seq_len=256))
    assert stream.fingerprint != a.fingerprint
    packages = len({d["package"] for d in calibration.corpus_documents("java")})
    assert f"({packages} packages)" in a.description  # 16 files reach every package


def test_the_stream_names_the_packages_it_drew_from():
    import re
    desc = build_calibration(byte_tokenizer(), "python", CalibrationSpec(n_samples=4, seq_len=64)).description
    files, packages = map(int, re.search(r"from (\d+) shipped python files \((\d+) packages\)", desc).groups())
    assert 1 <= packages <= files  # not every package in the corpus: a few files can't span them all


def test_files_sampling_leaves_data_tables_out():
    docs = [d for d in calibration.corpus_documents("python") if d["package"].startswith("rich")]
    assert any(d["path"] == "rich/_emoji_codes.py" for d in docs)
    spec = CalibrationSpec(sampling="files", n_samples=len(docs), seq_len=64)
    rng = random.Random(0)
    kept = [d for d in docs if not calibration.data_table(d["text"])]
    windows, files, _ = calibration._draw(byte_tokenizer(), docs, len(docs), spec, rng, [None] * len(docs), None)
    assert files == len(kept) == len(docs) - 2  # _emoji_codes.py and _palettes.py


def test_mixed_code_takes_the_four_languages_in_equal_shares():
    calib = build_calibration(byte_tokenizer(), "python", CalibrationSpec(source="mixed-code", sampling="files",
                                                                          n_samples=10, seq_len=64))
    assert calib.input_ids.shape == (10, 64)
    for lang, n in zip(calibration.MIXED_CODE, (3, 3, 2, 2)):
        assert f"{n} windows from" in calib.description.split(f"shipped {lang} files")[0].rsplit(";", 1)[-1]
    stream = build_calibration(byte_tokenizer(), "java", CalibrationSpec(source="mixed-code", n_samples=8, seq_len=64))
    assert stream.input_ids.shape == (8, 64) and "shipped cpp files" in stream.description


def test_literature_source_loads():
    docs = calibration.corpus_documents(calibration.LITERATURE)
    assert docs and all("def " not in d["text"][:200] for d in docs)
    tok = byte_tokenizer()
    calib = build_calibration(tok, "python", CalibrationSpec(source="literature", sampling="files", n_samples=4,
                                                             seq_len=128))
    assert calib.tokens == 4 * 128 and "shipped literature files" in calib.description
    text = tok.decode(calib.input_ids[0].tolist())
    assert sum(ch.isalpha() or ch == " " for ch in text) > 0.8 * len(text)


def test_workspace_files_sampling(tmp_path):
    for i in range(6):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 30)
    (tmp_path / "table.py").write_text("CODES = {\n" + "".join(f'    "k{i}": {i},\n' for i in range(100)) + "}\n")
    spec = CalibrationSpec(source="workspace", workspace=tmp_path, sampling="files", n_samples=6, seq_len=64)
    calib = build_calibration(byte_tokenizer(), "python", spec)
    assert calib.input_ids.shape == (6, 64) and "6 windows from 6 workspace files" in calib.description
    assert len(calibration.workspace_documents(tmp_path, "python")) == 6  # the table is not a source file
