"""The corrupted-entry matrix: one server, one good sub-model, then each corruption in turn, the cache looked up
again (a settings change). A corrupt entry is never loaded: it is removed and rebuilt, the server stays up, every
request is answered and the rebuilt entry is intact."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import fast_settings, serve, write_tree
from lsp_fixtures import PY_FILES
from lsprotocol import types

from subcoder.pruner.languages import LANGUAGES
from subcoder.pruner.storage import verify

pytestmark = pytest.mark.slow


def _rewrite_manifest(entry: Path, change) -> None:
    path = entry / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _truncate(entry):
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _flip_a_bit(entry):
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10
    weights.write_bytes(bytes(data))


def _wrong_checksum(entry):
    _rewrite_manifest(entry, lambda m: m["files"].update({"model.safetensors": "0" * 64}))


def _unreadable_weights_with_good_checksums(entry):
    """Passes every check the cache makes, fails in the loader."""
    weights = entry / "model.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\0" * 64)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    _rewrite_manifest(entry, lambda m: m["files"].update({"model.safetensors": digest}))


CORRUPTIONS = {
    "truncated weights": _truncate,
    "bit-flipped weights": _flip_a_bit,
    "manifest not JSON": lambda e: (e / "manifest.json").write_text("{not json"),
    "empty manifest": lambda e: (e / "manifest.json").write_text(""),
    "other format version": lambda e: _rewrite_manifest(e, lambda m: m.update(format_version=99)),
    "wrong checksum": _wrong_checksum,
    "missing tokenizer": lambda e: (e / "tokenizer.json").unlink(),
    "missing manifest": lambda e: (e / "manifest.json").unlink(),
    "checksums pass, load fails": _unreadable_weights_with_good_checksums,
}


async def _counters(s) -> dict:
    return (await s.command("subcoder.status"))["counters"]


async def test_every_corrupt_entry_is_rebuilt_never_loaded(tmp_path, tiny_model_dir):
    workspace = write_tree(tmp_path / "ws", PY_FILES)
    cache = Path(os.environ["SUBCODER_CACHE_DIR"])
    async with serve(workspace, cache, fast_settings(tiny_model_dir)) as s:
        await s.wait_state("ready")
        [entry] = [p for p in (cache / "submodels").iterdir() if not p.name.startswith(".")]
        uri = s.open("app/new.py", "def add(a, b):\n    return ")
        survived, requests = [], 0
        for i, (case, corrupt) in enumerate(CORRUPTIONS.items()):
            before = await _counters(s)
            corrupt(entry)
            languages = list(LANGUAGES) if i % 2 else [lang for lang in LANGUAGES if lang != "rust"]
            # A change of the enabled languages makes the session look the dominant one's entry up again.
            s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
                settings={"subcoder": {"languages": languages}}))

            async def rebuilt():
                now = await _counters(s)
                return now if now["buildsExtracted"] > before["buildsExtracted"] and \
                    now["subModelsLoaded"] > before["subModelsLoaded"] else None

            deadline = asyncio.get_running_loop().time() + 120
            while (after := await rebuilt()) is None:
                assert asyncio.get_running_loop().time() < deadline, f"{case}: not rebuilt; {s.statuses[-3:]}"
                await asyncio.sleep(0.3)
            # Loaded once, and that once was the rebuilt entry: the corrupt one never was.
            assert after["subModelsLoaded"] == before["subModelsLoaded"] + 1, case
            assert after["buildsExtracted"] == before["buildsExtracted"] + 1, case
            verify(entry)  # the entry is whole again
            result = await s.inline(uri, 1, 11)
            requests += 1
            assert result is not None and result.items, case
            status = await s.command("subcoder.status")
            assert status["state"] == "ready" and status["counters"]["requests"] == requests, (case, status)
            survived.append(case)
        assert survived == list(CORRUPTIONS)
        leftovers = [p.name for p in (cache / "submodels").iterdir() if p.name.startswith(".") and p.name != ".locks"]
        assert leftovers == []
