"""The shipped per-language corpora: calibration text and held-out text, split by package.

``data/{lang}.{split}.jsonl.gz`` holds one JSON record per source file:
``{"package": "name==version", "path": "relative/path", "text": "..."}``. ``build.py`` regenerates
and verifies them from pinned downloads; ``SOURCES.md`` and ``LICENSES/`` say where each came from.

Besides the languages (code, and ``prose``: Python documentation) there is ``literature``: passages
of public-domain English books, the study's neutral baseline. It calibrates (a calibration source),
but no sub-model is named after it, so it is not among the languages listed here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ..errors import ConfigError, CorruptError
from ..languages import GENERAL, LANGUAGES

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("calibration", "heldout")
_ORDER = (*LANGUAGES, GENERAL)
LITERATURE = "literature"  # neutral English prose: not about programming (see SOURCES.md)


def available_languages() -> list[str]:
    """Languages that have both a calibration and a held-out file, code languages first, then prose."""
    found = {p.name.split(".")[0] for p in DATA_DIR.glob("*.jsonl.gz")} - {LITERATURE}
    complete = [lang for lang in found if all((DATA_DIR / f"{lang}.{s}.jsonl.gz").is_file() for s in SPLITS)]
    return sorted(complete, key=lambda lang: (_ORDER.index(lang) if lang in _ORDER else len(_ORDER), lang))


def read_documents(lang: str, split: str = "calibration") -> list[dict]:
    """The records of one language and split, in their stored (sorted) order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    langs = available_languages()
    if lang not in langs and not (lang == LITERATURE and (DATA_DIR / f"{lang}.{split}.jsonl.gz").is_file()):
        raise ConfigError(f"no shipped corpus for language {lang!r}; choose one of {', '.join(langs)}")
    path = DATA_DIR / f"{lang}.{split}.jsonl.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptError(f"shipped corpus {path.name} cannot be read ({e}); reinstall subcoder") from e
