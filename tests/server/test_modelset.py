"""subcoder.server.modelset: which model answers a document."""

from __future__ import annotations

from subcoder.server.modelset import ModelSet, Served


def served(language, key=""):
    return Served(completer=object(), language=language, key=key)


def test_pick_prefers_the_language_then_the_dominant_then_any_sub_model_then_the_base():
    models = ModelSet()
    assert models.pick("python", "python") is None
    base = served(None)
    models.set_base(base)
    assert models.pick("python", "python") is base
    assert models.pick("python", "python", allow_base=False) is None
    js = served("javascript", "k-js")
    models.set_sub("javascript", js)
    assert models.pick("python", "python") is js, "any sub-model before the base"
    py = served("python", "k-py")
    models.set_sub("python", py)
    assert models.pick("javascript", "python") is js
    assert models.pick("rust", "python") is py
    assert models.pick(None, None) in (py, js)
    assert models.keys() == {"k-js", "k-py"}


def test_clear_and_replacing_the_base():
    models = ModelSet()
    models.set_base(served(None))
    models.set_sub("python", served("python", "k"))
    models.set_sub("python", served("python", "k2"))
    assert models.keys() == {"k2"}
    models.set_base(None)
    assert models.base is None and models.pick("c", None, allow_base=True).key == "k2"
    models.clear()
    assert models.base is None and models.subs == {} and models.keys() == set()
    assert models.pick("python", "python") is None
