"""Every argument is checked before any work starts: one line on stderr, exit status 2, nothing fetched."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from subcoder.pruner.cli import main


@pytest.mark.parametrize("argv, words", [
    (["prune", "--device", "tpu9"], "--device must be cpu, cuda, cuda:N or auto"),
    (["prune", "--device", "tpu"], "--device must be"),
    (["generate", "--file", "/definitely/missing.py"], "no such file"),
    (["generate", "--max-new-tokens", "-5"], "--max-new-tokens must be at least 1"),
    (["prune", "--samples", "0"], "--samples must be at least 1"),
    (["prune", "-l", "klingon"], "unknown language 'klingon'"),
    (["prune", "--mix-ratio", "1.5"], "--mix-ratio must be between 0 and 1"),
    (["prune", "--calibration", "workspace", "--workspace", "/definitely/missing"], "not a folder"),
    (["prune", "--fim", "0.25"], "use sampling 'files'"),
    (["prune", "--sampling", "files", "--fim", "2"], "must be in [0, 1]"),
])
def test_bad_arguments_fail_before_any_work(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBCODER_CACHE_DIR", str(tmp_path / "cache"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    cache = tmp_path / "cache"
    assert not (cache / "models").exists() and not (cache / "submodels").exists()  # nothing fetched or built


def test_cache_dir_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["models", "--cache-dir", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_cuda_without_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["generate", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_help_is_fast_and_correct():
    """`subcoder --help` must not import torch: a first contact answers in well under a second."""
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", "import sys; from subcoder.pruner.cli import main; "
                          "sys.argv=['subcoder','--help']; main()"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "%%" not in run.stdout and "generate -M python" in run.stdout
    modules = subprocess.run([sys.executable, "-c", "import sys; from subcoder.pruner.cli import build_parser; "
                              "build_parser(); print('torch' in sys.modules)"], capture_output=True, text=True)
    assert modules.stdout.strip() == "False", "building the parser imports torch"
    assert time.perf_counter() - started < 30  # a hang guard only; the speed itself is in benchmarks/cli_start.py


@pytest.mark.parametrize("command", ["prune", "generate", "models", "overlap", "export"])
def test_every_command_has_a_description(command):
    from subcoder.pruner.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert sub.description, command
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_parser_sources_match_calibration():
    from subcoder.pruner.calibration import SOURCES
    from subcoder.pruner.cli import build_parser

    prune = next(a for a in build_parser()._actions if a.dest == "command").choices["prune"]
    (calibration,) = [a for a in prune._actions if a.dest == "calibration"]
    assert tuple(calibration.choices) == SOURCES
