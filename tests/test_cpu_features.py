"""bench.hardware.cpu_features: flag parsing and the native/emulated verdict, on fake cpuinfo and on this machine."""

import subprocess
import sys

import pytest

from bench.hardware import cpu_features
from bench.hardware.cpu_features import emulated_precision

# Trimmed from real /proc/cpuinfo files: two processors each, as the kernel prints them.
X86_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni
"""
X86_ZEN4 = X86_AVX2.replace("avx512_vnni", "avx512_vnni avx512_bf16")
X86_SAPPHIRE_RAPIDS = X86_AVX2.replace("avx512_vnni", "avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8")
ARM_NEOVERSE_N1 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp

processor\t: 1
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""
ARM_NEOVERSE_V1 = ARM_NEOVERSE_N1.replace("asimddp", "asimddp bf16 i8mm")


def cpu_flags(cpuinfo_text=None):
    """The flags every processor of `cpuinfo_text` (else /proc/cpuinfo) has, as `emulated_precision` reads them."""
    return cpu_features._parse(cpu_features._read_cpuinfo(cpuinfo_text))[1]


def test_cpu_flags_parses_x86_and_arm_lines():
    flags = cpu_flags(X86_ZEN4)
    assert {"avx2", "avx512_bf16", "avx512f"} <= flags
    assert "GenuineIntel" not in flags and "processor" not in flags  # only the flags line is read
    assert {"fphp", "asimdhp", "bf16"} <= cpu_flags(ARM_NEOVERSE_V1)
    assert cpu_flags("") == frozenset() and cpu_flags("processor\t: 0\n") == frozenset()


def test_cpu_flags_keeps_only_flags_every_processor_has():
    hybrid = X86_ZEN4.replace("avx512_bf16\n", "\n", 1)  # processor 0 lacks the flag, processor 1 has it
    assert "avx512_bf16" in hybrid
    assert "avx512_bf16" not in cpu_flags(hybrid)
    assert emulated_precision("mixed_bfloat16", cpuinfo_text=hybrid) is not None


def test_float32_is_always_native():
    for text in (X86_AVX2, ARM_NEOVERSE_N1, ""):
        assert emulated_precision("float32", cpuinfo_text=text) is None


@pytest.mark.parametrize("text", [X86_ZEN4, X86_SAPPHIRE_RAPIDS, ARM_NEOVERSE_V1], ids=["zen4", "spr", "neoverse_v1"])
def test_bfloat16_native_with_bf16_instructions(text):
    assert emulated_precision("mixed_bfloat16", cpuinfo_text=text) is None


def test_bfloat16_emulated_without_them_names_the_missing_flags():
    reason = emulated_precision("mixed_bfloat16", cpuinfo_text=X86_AVX2)
    assert reason == "mixed_bfloat16 is emulated on this CPU (no avx512_bf16/amx_bf16 in the given cpuinfo)"
    # Arm is judged by its own flag: the x86 names mean nothing there
    assert "no bf16 " in emulated_precision("mixed_bfloat16", cpuinfo_text=ARM_NEOVERSE_N1)


def test_float16_native_only_on_arm_half_precision_and_gpus():
    assert emulated_precision("mixed_float16", cpuinfo_text=ARM_NEOVERSE_N1) is None
    no_simd_fp16 = ARM_NEOVERSE_N1.replace(" asimdhp", "")
    assert "fphp+asimdhp" in emulated_precision("mixed_float16", cpuinfo_text=no_simd_fp16)
    for x86 in (X86_AVX2, X86_ZEN4, X86_SAPPHIRE_RAPIDS):  # even with avx512_fp16 (documented simplification)
        assert "emulated on x86" in emulated_precision("mixed_float16", cpuinfo_text=x86)
    for precision in cpu_features.PRECISIONS:
        assert emulated_precision(precision, "GPU", cpuinfo_text=X86_AVX2) is None


def test_unreadable_flags_count_as_emulated(monkeypatch, tmp_path):
    assert "assumed emulated" in emulated_precision("mixed_bfloat16", cpuinfo_text="")
    monkeypatch.setattr(cpu_features, "CPUINFO", str(tmp_path / "missing"))  # as on macOS
    assert cpu_flags() == frozenset()
    reason = emulated_precision("mixed_bfloat16")
    assert "assumed emulated" in reason and str(tmp_path / "missing") in reason


def test_reads_the_cpuinfo_file_when_no_text_is_given(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(X86_AVX2)
    monkeypatch.setattr(cpu_features, "CPUINFO", str(fake))
    assert "avx2" in cpu_flags()
    assert emulated_precision("mixed_bfloat16") == (
        f"mixed_bfloat16 is emulated on this CPU (no avx512_bf16/amx_bf16 in {fake})"
    )


def test_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        emulated_precision("bf16")  # aliases are resolved by bench.config, not here
    with pytest.raises(ValueError, match="unknown device kind"):
        emulated_precision("float32", "TPU")


def test_this_machine_agrees_with_its_own_cpuinfo():
    """The real path: /proc/cpuinfo read by the module, checked against the file read here directly."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    flags = cpu_flags()
    assert flags == cpu_flags(text) and flags, "no flags parsed from this machine's /proc/cpuinfo"
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert (emulated_precision("mixed_bfloat16") is None) == native_bf16
    assert emulated_precision("float32") is None


def test_module_imports_no_tensorflow():
    """Contract: like bench.config and bench.results it imports no TensorFlow, so it is cheap anywhere."""
    code = "import sys, bench.hardware.cpu_features; sys.exit('tensorflow' in sys.modules)"
    root = cpu_features.__file__.rsplit("/bench/", 1)[0]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_cpu_kind_names_the_instruction_sets():
    def flags(*names):
        return "processor : 0\nflags : fpu sse2 " + " ".join(names) + "\n"

    assert cpu_features.cpu_kind(flags("avx", "avx2", "fma")) == "avx2"
    assert cpu_features.cpu_kind(flags("avx2", "avx512f", "avx512bw")) == "avx512"
    assert cpu_features.cpu_kind(flags("avx2", "avx512f", "avx512_bf16")) == "avx512_bf16"
    assert cpu_features.cpu_kind(flags("avx2", "amx_bf16", "amx_tile")) == "avx512_bf16"
    assert cpu_features.cpu_kind(flags("sse4_2")) == "x86"
    assert cpu_features.cpu_kind("Features : fp asimd bf16\n") == "arm"
    assert cpu_features.cpu_kind("") == "unknown"
    # a hybrid CPU is judged by its weakest core
    assert cpu_features.cpu_kind(flags("avx2", "avx512f") + flags("avx2")) == "avx2"


def test_cpu_inference_defaults_are_chosen_per_kind_of_cpu(monkeypatch):
    from bench.config import defaults
    from bench.config.options import RunConfig

    monkeypatch.delenv(defaults.ONEDNN_ENV, raising=False)
    inference = RunConfig(mode="inference")
    measured = defaults.CpuInference("off", False, "fused", "a test CPU")
    monkeypatch.setitem(defaults.CPU_INFERENCE, "avx512_bf16", measured)
    resolved = defaults.resolve(inference, "CPU", 1, "synthetic", "avx512_bf16")
    assert (resolved.xla, resolved.batch_norm) == (False, "fused")
    assert defaults.onednn_request(inference, "avx512_bf16") == "off"
    avx2 = defaults.resolve(inference, "CPU", 1, "synthetic", "avx2")
    assert (avx2.xla, avx2.batch_norm, defaults.onednn_request(inference, "avx2")) == (True, "keras", "on")
    # a kind nobody measured takes the fallback's, and says so
    assert defaults.cpu_inference("arm") == (defaults.CPU_INFERENCE[defaults.FALLBACK_CPU_KIND], False)
    assert defaults.resolve(inference, "CPU", 1, "synthetic", "arm").xla is True
    # training and GPUs are not per kind of CPU
    assert defaults.onednn_request(RunConfig(), "avx512_bf16") == defaults.ONEDNN_DEFAULT
    assert defaults.resolve(RunConfig(), "CPU", 1, "synthetic", "avx512_bf16").batch_norm == "fused"
    assert defaults.resolve(inference, "GPU", 1, "synthetic", "avx512_bf16").xla is True
    # the user's flag wins
    assert defaults.resolve(inference.replace(xla=True), "CPU", 1, "synthetic", "avx512_bf16").xla is True
