"""The /proc/cpuinfo parser, on text in the kernel's own format, and on this machine."""

from subcoder.pruner import cpu
from subcoder.pruner.loaded import resolve_dtype

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16
bugs\t\t: sysret_ss_attrs

processor\t: 1
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2
"""
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n"


def test_flags_and_name_of_the_first_processor():
    assert cpu.parse_flags(X86) == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_bf16"}
    assert cpu.parse_model_name(X86) == "AMD EPYC 7B13 64-Core Processor"
    assert cpu.parse_flags(ARM) == {"fp", "asimd", "bf16"}
    assert cpu.parse_model_name(ARM) is None


def test_nothing_listed_is_nothing_known():
    assert cpu.parse_flags("") == frozenset() and cpu.parse_model_name("") is None
    assert cpu.parse_flags("flagsome: x\n") == frozenset()  # a key that only starts with "flags"


def test_this_machine_agrees_with_the_dtype_default():
    flags = cpu.cpu_flags()
    assert isinstance(flags, frozenset) and cpu.cpu_flags() == flags
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu.native_bf16() == native
    assert resolve_dtype("auto") == ("bfloat16" if native else "float32")
    assert resolve_dtype("auto", "cuda") == "bfloat16" and resolve_dtype("float32") == "float32"
