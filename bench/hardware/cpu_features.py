"""Whether this CPU runs a precision natively or only emulates it, read from /proc/cpuinfo. No TensorFlow.

TensorFlow runs every precision on every CPU, but without the matching instructions the low-precision
matmuls and convolutions are emulated (computed through float32 with conversions around them), which is
slower than plain float32: a user saw mixed_bfloat16 at about 23 images/sec on a 2-core CPU without
bfloat16 instructions, ten times below float32. The benchmarks skip such runs; `bench.run` can warn.

The rules are deliberately simple (instruction-set flags only, no TensorFlow build or kernel checks):

- float32: native everywhere.
- mixed_bfloat16: native on GPUs, on x86 CPUs with `avx512_bf16` or `amx_bf16`, on Arm CPUs with `bf16`.
- mixed_float16: native on GPUs and on Arm CPUs with `fphp` and `asimdhp`; taken as emulated on every
  x86 CPU (its CPU path here, loss scaling included, ran far below float32).

GPUs are taken as native for all three (compute capability is not checked: bfloat16 needs sm_80+
for full speed). When the CPU's flags cannot be read (no /proc/cpuinfo, as on macOS) the reduced
precisions are reported as emulated, because a false "native" is what costs hours.
"""

from __future__ import annotations

from resnet.spec import PRECISIONS

CPUINFO = "/proc/cpuinfo"  # module-level so a test can point it at a fake file

X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one gives TF's oneDNN kernels native bfloat16
ARM_BF16_FLAGS = ("bf16",)
ARM_FP16_FLAGS = ("fphp", "asimdhp")  # both needed: scalar and SIMD half-precision arithmetic


def _read_cpuinfo(cpuinfo_text):
    if cpuinfo_text is not None:
        return cpuinfo_text
    try:
        with open(CPUINFO) as fh:
            return fh.read()
    except OSError:
        return ""


def _parse(text):
    """(architecture, flags): "x86" from `flags` lines, "arm" from `Features` lines, else "unknown".

    The flags are those every listed processor has (the intersection), so a hybrid CPU whose cores
    differ is judged by its weakest core.
    """
    arch, flags = "unknown", None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key in ("flags", "Features"):
            arch = "x86" if key == "flags" else "arm"
            these = set(value.split())
            flags = these if flags is None else flags & these
    return arch, frozenset(flags or ())


def emulated_precision(precision: str, device_kind: str = "CPU", cpuinfo_text: str | None = None) -> str | None:
    """Why `precision` is emulated on this device, or None when it runs natively.

    `precision` is one of PRECISIONS (canonical names, as `bench.config` resolves them);
    `device_kind` is "CPU" or "GPU". `cpuinfo_text` replaces /proc/cpuinfo (for tests and for
    judging another machine). The reason is one sentence naming the missing flags, fit for a skip
    message or a warning.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device_kind not in ("CPU", "GPU"):
        raise ValueError(f"unknown device kind {device_kind!r}; expected 'CPU' or 'GPU'")
    if precision == "float32" or device_kind == "GPU":
        return None
    source = "the given cpuinfo" if cpuinfo_text is not None else CPUINFO
    arch, flags = _parse(_read_cpuinfo(cpuinfo_text))
    if arch == "unknown":
        return f"{precision} is assumed emulated on this CPU (no CPU flags found in {source})"
    if precision == "mixed_bfloat16":
        wanted = X86_BF16_FLAGS if arch == "x86" else ARM_BF16_FLAGS
        if flags.intersection(wanted):
            return None
        return f"{precision} is emulated on this CPU (no {'/'.join(wanted)} in {source})"
    # mixed_float16
    if arch == "arm":
        if flags.issuperset(ARM_FP16_FLAGS):
            return None
        return f"{precision} is emulated on this CPU (no {'+'.join(ARM_FP16_FLAGS)} in {source})"
    # Simplification: recent x86 parts (AVX512-FP16, AMX-FP16) have float16 instructions, but the
    # measured mixed_float16 CPU path here (about 81 images/sec, loss scaling) is far below float32.
    return f"{precision} is emulated on x86 CPUs (float16 is taken as native only on GPUs and Arm fphp+asimdhp)"


def cpu_kind(cpuinfo_text: str | None = None) -> str:
    """The kind of CPU by the instruction sets its kernels can use (`bench.config.defaults.CPU_INFERENCE` is keyed
    by it): `avx512_bf16` (AVX-512 with native bfloat16, or AMX), `avx512`, `avx2`, `x86` (older), `arm`, or
    `unknown` (no flags readable). The weakest core decides (`_parse`)."""
    arch, flags = _parse(_read_cpuinfo(cpuinfo_text))
    if arch != "x86":
        return arch
    if flags.intersection(X86_BF16_FLAGS):
        return "avx512_bf16"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "x86"
