"""subcoder.server.server.kernel_text: the status tooltip's "kernel: on/off (why)"."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from test_session import Rig

from subcoder.server.modelset import Served
from subcoder.server.server import kernel_text


def sub_model(uses_kernel: bool):
    return Served(SimpleNamespace(info=SimpleNamespace(sparse_kernel=uses_kernel)), "python", "k", 1, 0.5)


def test_kernel_text_says_why(tmp_path):
    rig = Rig(tmp_path)
    session = rig.session
    assert kernel_text(session).startswith("off (the dense base model")
    session.models.set_sub("python", sub_model(True))
    assert kernel_text(session).startswith("on (")
    session.models.set_sub("python", sub_model(False))
    assert kernel_text(session).startswith("off (")
    session.settings = replace(session.settings, sparse_kernel=False)
    assert kernel_text(session) == "off (subcoder.sparseKernel is off)"
    session.settings = replace(session.settings, sparse_kernel=True, sparsity=0.0)
    assert kernel_text(session) == "off (sparsity 0: the dense model is served)"
