"""Where a completion ends: the stop tokens of a model, the stop rules on the text, the final trim.

One implementation for every caller: the completer applies a `StopRule` between tokens, the
evaluation applies the same rules to each row of a batch (`StopRule("single-line").check` for
next-line tasks, `StopRule.function_end(...)` for whole function bodies).
"""

from __future__ import annotations

RULES = ("single-line", "multi-line", "function-end")
# Tokens that end a document or a turn in the tokenizers of the supported families, stop ids even
# where the tokenizer does not list them as special.
_END_TOKENS = ("<|endoftext|>", "<|file_sep|>", "<|fim_pad|>", "<|im_end|>", "<|repo_name|>", "<file_sep>")


def stop_ids(tokenizer, model, fim_ids=()) -> frozenset[int]:
    """Token ids after which nothing more is generated: special tokens, the EOS ids of the model's
    config and generation config, end-of-document markers, and the FIM markers (`fim_ids`): a FIM
    marker in the middle means the model is done."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    for source in (model.config, getattr(model, "generation_config", None)):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[tok] for tok in _END_TOKENS if tok in vocab)
    ids.update(fim_ids or ())
    return frozenset(int(i) for i in ids)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _first_code_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


class StopRule:
    """Decides, from the text generated so far, where the completion ends.

    `check(text)` returns the length of `text` to keep when generation must stop, else None.
    Single-line: the end of the first line with content (the rest of the cursor's line when the
    cursor is mid-line). Multi-line: a line that leaves the block (less indented than the cursor's
    line, or back at its level after going deeper: a closing bracket line is kept), two blank lines
    in a row, or a line that repeats the first line of code after the cursor. Function end
    (`StopRule.function_end`): the first line that starts at column 0.
    """

    def __init__(self, mode: str, prefix: str = "", suffix: str = ""):
        if mode not in RULES:
            raise ValueError(f"stop rule must be one of {', '.join(RULES)}, not {mode!r}")
        self.mode = mode
        self.line_before = prefix.rsplit("\n", 1)[-1]
        self.mid_line = bool(suffix.split("\n", 1)[0].strip())
        self.base_indent = _indent(self.line_before)
        self.suffix_line = _first_code_line(suffix)
        self.closing_brace = False

    @classmethod
    def function_end(cls, *, closing_brace: bool) -> StopRule:
        """The end of a function body written after its signature: the first line at column 0 is cut
        (a new `def`, `if __name__`, `print`...), except a `}` when `closing_brace` (brace languages:
        it closes the function, or Java's class), which is kept."""
        rule = cls("function-end")
        rule.closing_brace = closing_brace
        return rule

    def check(self, text: str) -> int | None:
        if self.mode == "single-line":
            return self._single(text)
        if self.mode == "multi-line":
            return self._multi(text)
        return self._function_end(text)

    def _single(self, text: str) -> int | None:
        start = 0
        while True:
            nl = text.find("\n", start)
            if nl < 0:
                return None
            if self.mid_line or text[:nl].strip():
                return nl
            start = nl + 1

    def _multi(self, text: str) -> int | None:
        lines = text.split("\n")
        complete = lines[:-1]  # the last piece is still being written
        offset = 0
        went_deeper = False
        blank_run = 0
        for i, line in enumerate(complete):
            if i == 0:
                # The rest of the cursor's own line; on a blank line it sets the body's indentation.
                whole = self.line_before + line
                if not self.line_before.strip() and whole.strip() and _indent(whole) > self.base_indent:
                    went_deeper = True
                offset += len(line) + 1
                continue
            stripped = line.strip()
            if not stripped:
                blank_run += 1
                if blank_run >= 2:
                    return offset - 1
                offset += len(line) + 1
                continue
            blank_run = 0
            indent = _indent(line)
            if self.suffix_line and stripped == self.suffix_line:
                return max(offset - 1, 0)
            if indent < self.base_indent or (went_deeper and indent == self.base_indent):
                if stripped[0] in ")]}" and indent == self.base_indent:
                    return offset + len(line)  # keep the closing line, stop after it
                return max(offset - 1, 0)
            if indent > self.base_indent:
                went_deeper = True
            offset += len(line) + 1
        return None

    def _function_end(self, text: str) -> int | None:
        pos = 0
        while (nl := text.find("\n", pos)) >= 0:
            if nl + 1 >= len(text):
                return None  # the next line has not started yet
            ch = text[nl + 1]
            if not ch.isspace():
                return nl + 2 if self.closing_brace and ch == "}" else nl
            pos = nl + 1
        return None


def postprocess(text: str, suffix: str, mode: str) -> str:
    """Drop trailing whitespace, trim what already follows the cursor, drop suggestions that add nothing."""
    if "\ufffd" in text:
        # bytes that do not decode (a multi-byte character cut short, or a byte-level model's noise):
        # never insert them into the user's file
        text = text[: text.index("\ufffd")]
    text = text.rstrip()
    if not text.strip():
        return ""
    rest = suffix.split("\n", 1)[0].rstrip()
    if rest:
        # The model often closes what is already closed after the cursor: `foo(x)` with `)` there.
        for k in range(min(len(rest), len(text)), 0, -1):
            if text.endswith(rest[:k]):
                text = text[:-k].rstrip() if k == len(text) else text[:-k]
                break
    if not text.strip():
        return ""
    if suffix.lstrip().startswith(text.strip()) and (mode == "single-line" or "\n" in text.strip()):
        return ""  # the suggestion is what is already there
    return text
