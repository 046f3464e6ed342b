"""subcoder.pruner.languages: the one language table, and every place that lists languages reads it
(the extension's package.json and settings.ts are read as files here: no node needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from subcoder.pruner import corpora, languages
from subcoder.pruner.languages import GENERAL, LANGUAGES, language_of_interpreter, language_of_lsp_id, language_of_name

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "extension"


def test_buildable_languages_are_the_shipped_corpora():
    assert LANGUAGES == ("python", "java", "cpp", "javascript", "typescript", "go", "rust")
    assert corpora.available_languages() == [*LANGUAGES, GENERAL]
    assert all(languages.BY_NAME[name].corpus for name in LANGUAGES)


def test_humaneval_tags_name_the_shipped_files():
    data = REPO / "pruner" / "evaluation" / "data"
    shipped = {p.name.removeprefix("humaneval_").removesuffix(".jsonl.gz")
               for p in (data / "humaneval-x").glob("humaneval_*.jsonl.gz")}
    assert set(languages.HUMANEVAL_TAGS.values()) == shipped
    assert languages.HUMANEVAL_TAGS["javascript"] == "js"
    for tag in shipped:
        assert (data / "humaneval-x-singleline" / f"{tag}.jsonl.gz").is_file()


@pytest.mark.parametrize("name, language", [
    ("a.py", "python"), ("stubs.pyi", "python"), ("SCRIPT.PY", "python"), ("Main.java", "java"),
    ("x.C", "cpp"), ("x.c", "c"), ("x.h", "cpp"), ("X.H", "cpp"), ("vector.tcc", "cpp"), ("app.jsx", "javascript"),
    ("types.d.ts", "typescript"), ("lib.rs", "rust"), ("run.sh", "shell"),
    ("Makefile", None), (".py", None), ("notes.txt", None), ("archive.tar.gz", None),
])
def test_language_of_name(name, language):
    assert language_of_name(name) == language


def test_interpreters_and_lsp_ids():
    assert language_of_interpreter("python3.11") == "python"
    assert language_of_interpreter("node") == "javascript"
    assert language_of_interpreter("ts-node") == "typescript"
    assert language_of_interpreter("perl") is None
    assert language_of_lsp_id("TypeScriptReact") == "typescript"
    assert language_of_lsp_id("cuda-cpp") == "cpp"
    assert language_of_lsp_id(None) is None and language_of_lsp_id("plaintext") is None
    for name in LANGUAGES:  # VS Code's id of every buildable language is its own name
        assert language_of_lsp_id(name) == name


def test_consumers_read_the_registry():
    from subcoder.pruner import calibration
    from subcoder.pruner.corpora import build
    from subcoder.pruner.evaluation import humaneval, runner
    from subcoder.server import modelset, settings

    assert calibration.LANGUAGES is LANGUAGES and calibration.GENERAL == GENERAL
    assert settings.Settings().languages == LANGUAGES
    assert modelset.LANGUAGE_IDS == languages.LSP_IDS
    assert runner.LANGUAGES == humaneval.LANGUAGES == languages.HUMANEVAL_LANGUAGES == ("python", "java", "cpp", "javascript")
    assert build.LANGUAGES == (*LANGUAGES, GENERAL)
    for name in LANGUAGES:  # the corpora take the registry's extensions, less the ones they were cut without
        assert set(build.EXTENSIONS[name]) == set(languages.BY_NAME[name].extensions) - set(build.LEFT_OUT)


def test_extension_package_json_lists_the_registry():
    declared = json.loads((EXTENSION / "package.json").read_text())["contributes"]["configuration"]["properties"]
    setting = declared["subcoder.languages"]
    assert tuple(setting["items"]["enum"]) == LANGUAGES
    assert tuple(setting["default"]) == LANGUAGES


def test_extension_settings_ts_lists_the_registry():
    source = (EXTENSION / "src" / "common" / "settings.ts").read_text()
    found = re.search(r"SERVER_DEFAULTS[^{]*\{.*?\blanguages:\s*\[([^\]]*)\]", source, re.S)
    assert found, "settings.ts: SERVER_DEFAULTS.languages not found"
    assert tuple(re.findall(r"'([^']+)'", found.group(1))) == LANGUAGES
