"""Turning a language off in the settings stops its running build (the session over the build manager's interface)."""

from __future__ import annotations

from dataclasses import replace

from test_session import Rig


async def test_turning_the_building_language_off_cancels_its_build(tmp_path):
    rig = Rig(tmp_path)
    await rig.session.start()
    assert rig.builds.current is not None and rig.builds.current.language == "python"
    rig.session.configure(replace(rig.session.settings, languages=("go", "rust")))
    await rig.session.settle()
    assert rig.builds.cancels == 1 and rig.builds.current is None


async def test_turning_another_language_off_keeps_the_build(tmp_path):
    rig = Rig(tmp_path)
    await rig.session.start()
    rig.session.configure(replace(rig.session.settings, languages=("python", "go")))
    await rig.session.settle()
    assert rig.builds.cancels == 0 and rig.builds.current.language == "python"
