"""The languages subcoder knows: one table that calibration, the corpora, evaluation, the server's
detection and LSP mapping, and (through a test) the editor extension all read.

A language with a shipped corpus can have a sub-model built for it; the others are only recognised,
so that the status report can say a workspace is mostly C or Ruby instead of pretending it is empty.
Imports nothing from subcoder: every other module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

GENERAL = "prose"  # the non-code baseline: English prose, the role C4 plays in the Wanda paper


@dataclass(frozen=True)
class Language:
    name: str
    extensions: tuple[str, ...]  # file name endings, case as written (".C" is C++, ".c" is C)
    lsp_ids: tuple[str, ...]  # LSP `languageId`s (VS Code's names) that mean this language
    interpreters: tuple[str, ...] = ()  # program names after `#!` (or `#!/usr/bin/env`), version digits dropped
    corpus: bool = False  # a shipped calibration + held-out corpus exists: sub-models can be built
    humaneval: str | None = None  # HumanEval-X's file tag (`humaneval_{tag}.jsonl.gz`); None: not in HumanEval-X


REGISTRY: tuple[Language, ...] = (
    # Order matters: it is the order of every list shown to users and of the default settings.
    Language("python", (".py", ".pyi"), ("python",), ("python",), corpus=True, humaneval="python"),
    Language("java", (".java",), ("java",), corpus=True, humaneval="java"),
    Language("cpp", (".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx", ".h", ".ipp", ".inl", ".tcc", ".C"),
             ("cpp", "c++", "cuda-cpp"), corpus=True, humaneval="cpp"),
    Language("javascript", (".js", ".mjs", ".cjs", ".jsx"), ("javascript", "javascriptreact"), ("node",),
             corpus=True, humaneval="js"),
    Language("typescript", (".ts", ".tsx", ".mts", ".cts"), ("typescript", "typescriptreact"), ("deno", "ts-node"),
             corpus=True),
    Language("go", (".go",), ("go",), corpus=True),
    Language("rust", (".rs",), ("rust",), corpus=True),
    # Recognised only (no corpus). `.h` stays C++'s above: detection decides C or C++ by content.
    Language("c", (".c",), ("c",)),
    Language("csharp", (".cs",), ("csharp",)),
    Language("ruby", (".rb",), ("ruby",), ("ruby",)),
    Language("php", (".php",), ("php",), ("php",)),
    Language("kotlin", (".kt", ".kts"), ("kotlin",)),
    Language("swift", (".swift",), ("swift",)),
    Language("scala", (".scala",), ("scala",)),
    Language("shell", (".sh", ".bash"), ("shellscript",), ("bash", "sh", "zsh")),
    Language("lua", (".lua",), ("lua",), ("lua",)),
)

BY_NAME: dict[str, Language] = {lang.name: lang for lang in REGISTRY}
LANGUAGES: tuple[str, ...] = tuple(lang.name for lang in REGISTRY if lang.corpus)  # sub-models can be built
HUMANEVAL_LANGUAGES: tuple[str, ...] = tuple(lang.name for lang in REGISTRY if lang.humaneval)
HUMANEVAL_TAGS: dict[str, str] = {lang.name: lang.humaneval for lang in REGISTRY if lang.humaneval}
LSP_IDS: dict[str, str] = {lsp_id: lang.name for lang in REGISTRY for lsp_id in lang.lsp_ids}
_BY_SUFFIX: dict[str, str] = {ext: lang.name for lang in REGISTRY for ext in lang.extensions}
_BY_INTERPRETER: dict[str, str] = {prog: lang.name for lang in REGISTRY for prog in lang.interpreters}


def _check() -> None:
    """Every extension, LSP id and interpreter names one language (a clash would make the maps order-dependent)."""
    for field, index in (("extensions", _BY_SUFFIX), ("lsp_ids", LSP_IDS), ("interpreters", _BY_INTERPRETER)):
        listed = [key for lang in REGISTRY for key in getattr(lang, field)]
        assert len(listed) == len(index), f"a value of Language.{field} is claimed by two languages"
    assert GENERAL not in BY_NAME, "the prose baseline is not a programming language"


_check()


def language_of_name(name: str) -> str | None:
    """The language a file name's extension says; None without an extension or for an unknown one.

    The exact ending wins (`.C` is C++), else its lower case (`.PY` is Python, `.H` a header).
    """
    dot = name.rfind(".")
    if dot <= 0:  # no extension, or a dotfile such as `.py`
        return None
    suffix = name[dot:]
    return _BY_SUFFIX.get(suffix) or _BY_SUFFIX.get(suffix.lower())


def language_of_lsp_id(language_id: str | None) -> str | None:
    return LSP_IDS.get((language_id or "").lower())


def language_of_interpreter(program: str) -> str | None:
    """`python3.11` → python: the program of a shebang line, its version digits ignored."""
    return _BY_INTERPRETER.get(program.rstrip("0123456789."))
