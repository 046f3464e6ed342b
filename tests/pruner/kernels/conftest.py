"""The loaded kernel ops, shared by the kernel tests that call them directly."""

from __future__ import annotations

import os

import pytest

from subcoder.pruner import kernels as sparse
from subcoder.pruner.kernels import native

# Read before any test runs: the per-test cache isolation (tests/conftest.py) points
# SUBCODER_CACHE_DIR elsewhere during each test, and the kernel is built once per machine instead.
_CACHE_AT_IMPORT = os.environ.get("SUBCODER_CACHE_DIR")


@pytest.fixture(scope="session")
def ops():
    """The loaded kernel ops (built in the real cache, not the per-test one), or skip where this
    machine cannot build them; a build failure where it should build fails the test."""
    saved = os.environ.get("SUBCODER_CACHE_DIR")
    if _CACHE_AT_IMPORT is None:
        os.environ.pop("SUBCODER_CACHE_DIR", None)
    else:
        os.environ["SUBCODER_CACHE_DIR"] = _CACHE_AT_IMPORT
    try:
        ok, reason = sparse.kernel_available()
    finally:
        if saved is None:
            os.environ.pop("SUBCODER_CACHE_DIR", None)
        else:
            os.environ["SUBCODER_CACHE_DIR"] = saved
    if not ok:
        missing_tool = reason.startswith(("no C++ compiler", "ninja is not installed"))
        if native._why_not_here() is None and not missing_tool:
            pytest.fail(f"the kernel should build on this machine: {reason}")
        pytest.skip(reason)
    return native.get_ops()
