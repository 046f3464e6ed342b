"""The command line: bad input ends with one readable line and a non-zero exit, leaving nothing behind."""

import errno
import os
import subprocess
import sys

import pytest

from subcoder.pruner.cli import main
from tiny_models import save_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny", "llama")


@pytest.fixture
def ws(tmp_path):
    d = tmp_path / "ws"
    d.mkdir()
    (d / "a.py").write_text("def f(x):\n    return x * 2\n" * 40)
    return d


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("subcoder: error: ")
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["prune", "-l", "cobol"], "unknown language"),
    (["prune", "-M", "gpt-17"], "unknown model"),
    (["prune", "-s", "1.5"], "sparsity must be in (0, 1)"),
    (["prune", "-s", "0"], "sparsity must be in (0, 1)"),
    (["prune", "-p", "2:4", "-s", "0.6"], "2:4"),
    (["prune", "-p", "5:4"], "N:M"),
    (["prune", "-M", "/nonexistent/model.gguf"], "not found"),
])
def test_bad_input_one_line(capsys, tmp_path, argv, words):
    code, out, err = run(capsys, *argv, "-o", str(tmp_path / "out"), "--no-sample", "-q")
    assert code == 2
    assert words in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_corrupt_gguf(capsys, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    code, _, err = run(capsys, "prune", "-M", str(bad), "-o", str(tmp_path / "out"), "-q", "--no-sample")
    assert code == 2 and "GGUF" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_model_dir_without_weights(capsys, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    code, _, err = run(capsys, "prune", "-M", str(d), "-o", str(tmp_path / "out"), "-q", "--no-sample")
    assert code == 2 and one_error_line(err)


def test_unwritable_cache(capsys, tmp_path, tiny_dir, ws):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "prune", "-M", str(tiny_dir), "--calibration", "workspace", "--workspace", str(ws),
                       "--samples", "2", "--seq-len", "32", "--cache-dir", str(blocker / "cache"), "-q", "--no-sample")
    assert code == 2 and "cannot write" in one_error_line(err)


def test_full_disk_leaves_nothing(capsys, tmp_path, tiny_dir, ws, monkeypatch):
    import subcoder.pruner.paths as paths

    real_replace = os.replace

    def full(src, dst):
        if ".tmp-" in str(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(paths.os, "replace", full)
    code, _, err = run(capsys, "prune", "-M", str(tiny_dir), "--calibration", "workspace", "--workspace", str(ws),
                       "--samples", "2", "--seq-len", "32", "-o", str(tmp_path / "out"), "-q", "--no-sample")
    assert code == 2 and "no space left" in one_error_line(err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_prune_overlap_export_generate_models(capsys, tmp_path, tiny_dir, ws):
    base = ["-M", str(tiny_dir), "--calibration", "workspace", "--workspace", str(ws), "--samples", "2", "--seq-len", "32", "-q"]
    code, out, _ = run(capsys, "prune", *base, "-o", str(tmp_path / "a"), "--no-sample")
    assert code == 0 and "50.00% of decoder linear weights" in out
    code, out, _ = run(capsys, "prune", *base, "-o", str(tmp_path / "b"), "--no-sample", "--method", "magnitude")
    assert code == 0
    code, out, err = run(capsys, "overlap", str(tmp_path / "a"), str(tmp_path / "b"), "--png", str(tmp_path / "h.png"))
    assert code == 0 and "model" in out.splitlines()[0]
    assert (tmp_path / "h.png").stat().st_size > 1000
    code, out, _ = run(capsys, "export", str(tmp_path / "a"), str(tmp_path / "dense"))
    assert code == 0 and (tmp_path / "dense" / "model.safetensors").exists()
    code, out, err = run(capsys, "generate", "-M", str(tmp_path / "a"), "--prompt", "def f(", "--max-new-tokens", "4")
    assert code == 0 and "prompt +" in err
    code, out, _ = run(capsys, "models")
    assert code == 0 and "qwen2.5-coder-0.5b" in out


def test_help_teaches():
    out = subprocess.run([sys.executable, "-m", "subcoder.pruner.cli", "prune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--calibration" in out.stdout and "Wanda" in out.stdout


def test_eval_arguments_are_checked_before_any_work(capsys):
    code, _, err = run(capsys, "eval", "--model", "no-such-model", "--resume")
    assert code == 2 and [ln for ln in err.splitlines() if ln.strip()] == ["subcoder eval: --resume needs --out"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "no-such-model", "--languages", "python,cobol"])
    assert exc.value.code == 2 and "choose from python, java, cpp, javascript" in capsys.readouterr().err


def test_a_really_full_disk_is_the_cache_error(capsys, tmp_path, tiny_dir, ws):
    """The weights' writer (safetensors) fails with ENOSPC inside its own code: still one cache error line."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        code, _, err = run(capsys, "prune", "-M", str(tiny_dir), "--calibration", "workspace", "--workspace", str(ws),
                           "--samples", "2", "--seq-len", "32", "-o", str(disk / "out"), "-q", "--no-sample")
        line = one_error_line(err)
        assert code == 2 and "no space left" in line and str(disk) in line, err
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_models_removes_what_killed_writes_left(capsys, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    subs = tmp_path / "submodels"
    (subs / f".python-abc.tmp-{dead.pid}-x1").mkdir(parents=True)
    (subs / f".python-def.tmp-{os.getpid()}-x1").mkdir()  # a write still in progress
    (tmp_path / "models" / f".smollm2.tmp-{dead.pid}-x2").mkdir(parents=True)
    code, _, err = run(capsys, "models", "--cache-dir", str(tmp_path))
    assert code == 0 and err.count("interrupted write") == 2, err
    assert [p.name for p in subs.iterdir()] == [f".python-def.tmp-{os.getpid()}-x1"]
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_sigterm_is_an_interrupt_that_leaves_nothing(tmp_path, tiny_dir, ws):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "subcoder.pruner.cli", "prune", "-M", str(tiny_dir), "--calibration",
                              "workspace", "--workspace", str(ws), "--samples", "2", "--seq-len", "32", "-o", str(out),
                              "--no-sample"], stderr=subprocess.PIPE, text=True)
    child.stderr.read(1)  # the first progress bar: the work has begun
    child.terminate()
    err = child.stderr.read()
    assert child.wait(60) == 130 and "interrupted" in err and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["ws"]
