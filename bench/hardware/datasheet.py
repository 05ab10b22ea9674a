"""Datasheet peak FLOP/s of common NVIDIA accelerators, for the MFU the field reports.

MFU as PaLM (Chowdhery et al. 2022, appendix B) and nanoGPT define it: achieved
model FLOP/s divided by the accelerator's datasheet peak in the precision the
model runs in. The benchmark also reports MFU against the peak it measures
(`bench.hardware.peak`); the two answer different questions (how far from the vendor's
number, how far from what this machine's matmul reaches).

All figures are DENSE tensor-core (or plain FP32) TFLOP/s per GPU. NVIDIA's
Ampere-and-later datasheets print tensor-core figures "with sparsity" (2:4
structured sparsity, marked *) and state that dense is one half; those are
halved here and the source says so. Figures were read from the NVIDIA datasheets
named in each entry and cross-checked against secondary pages that reproduce
them (found with a documentation search in 2026); a device or precision without
a datasheet figure gives None rather than a guess.

No TensorFlow import: the results table and the Ray driver use this module.
Which precision the hardware actually runs (TF32 or not) is decided on the TF
side (`bench.hardware.peak.tf32_in_effect`); `tf32_in_effect` here is the pure rule.
"""

from __future__ import annotations

import dataclasses
import re

from resnet.spec import COMPUTE_DTYPE, PRECISION_ALIASES


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # the datasheet's name of the part
    pattern: str  # regex searched in the upper-cased TF device name
    fp32: float  # plain FP32 (CUDA cores), TFLOP/s
    tf32: float | None  # TF32 tensor cores, dense; None before Ampere
    fp16: float | None  # FP16 tensor cores (FP32 accumulate where both are given), dense
    bf16: float | None  # BF16 tensor cores, dense; None before Ampere
    source: str  # the document the figures come from


_V100 = "NVIDIA Tesla V100 GPU Accelerator datasheet (2018)"
_AMPERE_SPARSE = "tensor figures are the datasheet's sparse ones halved (dense)"

# Order matters only for readability: the patterns are mutually exclusive (tested).
ACCELERATORS = (
    # Volta: no TF32, no BF16. "Tensor Performance" is FP16 multiply with FP32 accumulate.
    # The SXM3 (DGX-2) and V100S parts have higher clocks and other figures: not matched.
    Accelerator(
        "Tesla V100 SXM2",
        r"\bV100-SXM2\b",
        15.7,
        None,
        125.0,
        None,
        _V100 + ", V100 SXM2 column: single-precision 15.7, tensor 125 TFLOPS",
    ),
    Accelerator(
        "Tesla V100 PCIe",
        r"\bV100-PCIE\b",
        14.0,
        None,
        112.0,
        None,
        _V100 + ", V100 PCIe column: single-precision 14, tensor 112 TFLOPS",
    ),
    # Turing: "Mixed Precision (FP16/FP32)" 65 TFLOPS.
    Accelerator(
        "Tesla T4",
        r"\bT4\b",
        8.1,
        None,
        65.0,
        None,
        "NVIDIA T4 Tensor Core GPU datasheet: single precision 8.1, mixed precision FP16/FP32 65 TFLOPS",
    ),
    # Ampere. The A100 datasheet gives the same compute figures for SXM and PCIe (40 and 80 GB).
    Accelerator(
        "A10",
        r"\bA10\b",
        31.2,
        62.5,
        125.0,
        125.0,
        "NVIDIA A10 Tensor Core GPU datasheet: FP32 31.2, TF32 62.5|125*, BF16 125|250*, "
        "FP16 125|250* TFLOPS (* sparse)",
    ),
    Accelerator(
        "A100 SXM",
        r"\bA100\b.*\bSXM",
        19.5,
        156.0,
        312.0,
        312.0,
        "NVIDIA A100 Tensor Core GPU datasheet, A100 SXM column: FP32 19.5, TF32 156|312*, "
        "BF16 312|624*, FP16 312|624* TFLOPS (* sparse)",
    ),
    Accelerator(
        "A100 PCIe",
        r"\bA100\b.*\bPCIE",
        19.5,
        156.0,
        312.0,
        312.0,
        "NVIDIA A100 Tensor Core GPU datasheet, A100 PCIe column: FP32 19.5, TF32 156|312*, "
        "BF16 312|624*, FP16 312|624* TFLOPS (* sparse)",
    ),
    # Ada.
    Accelerator(
        "L4",
        r"\bL4\b",
        30.3,
        60.0,
        121.0,
        121.0,
        "NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3, TF32 120*, BF16 242*, FP16 242* TFLOPS; " + _AMPERE_SPARSE,
    ),
    # Hopper. TF names the SXM5 part "NVIDIA H100 80GB HBM3"; the NVL parts differ and are not matched.
    Accelerator(
        "H100 SXM",
        r"\bH100\b(?!.*\bNVL\b).*\b(HBM3|SXM)",
        67.0,
        494.5,
        989.5,
        989.5,
        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67, TF32 989*, BF16 1,979*, "
        "FP16 1,979* TFLOPS; " + _AMPERE_SPARSE,
    ),
    Accelerator(
        "H100 PCIe",
        r"\bH100\b(?!.*\bNVL\b).*\bPCIE\b",
        51.0,
        378.0,
        756.5,
        756.5,
        "NVIDIA H100 Tensor Core GPU datasheet (2022), H100 PCIe column: FP32 51, TF32 756*, "
        "BF16 1,513*, FP16 1,513* TFLOPS; " + _AMPERE_SPARSE,
    ),
    Accelerator(
        "H200 SXM",
        r"\bH200\b(?!.*\bNVL\b)",
        67.0,
        494.5,
        989.5,
        989.5,
        "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: FP32 67, TF32 989*, BF16 1,979*, "
        "FP16 1,979* TFLOPS; " + _AMPERE_SPARSE,
    ),
)

# The datasheet column of each precision: its command-line alias (fp32, fp16, bf16); compute dtypes work too.
_COLUMN = {
    **{policy: alias for alias, policy in PRECISION_ALIASES.items()},
    **{COMPUTE_DTYPE[policy]: alias for alias, policy in PRECISION_ALIASES.items()},
}

AMPERE = (8, 0)  # compute capability from which TF runs float32 matmuls/convs in TF32 by default


def match(device_name: str) -> Accelerator | None:
    """The table entry whose pattern the TF GPU device name matches, or None."""
    name = (device_name or "").upper()
    hits = [a for a in ACCELERATORS if re.search(a.pattern, name)]
    return hits[0] if len(hits) == 1 else None


def lookup(device_name: str, precision: str, tf32: bool) -> tuple[float | None, str]:
    """(dense datasheet TFLOP/s of one device, source) for `precision`; (None, reason) when unknown.

    `precision` is a run precision (float32 | mixed_float16 | mixed_bfloat16) or a dtype name.
    `tf32` says whether float32 matmuls run on TF32 tensor cores (see `tf32_in_effect`);
    it is ignored for the 16-bit precisions.
    """
    if precision not in _COLUMN:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(_COLUMN)}")
    acc = match(device_name)
    if acc is None:
        return None, f"no datasheet figure for device {device_name!r}"
    column = _COLUMN[precision]
    if column == "fp32" and tf32:
        column = "tf32"
    tflops = getattr(acc, column)
    label = {"fp32": "FP32", "tf32": "TF32 tensor", "fp16": "FP16 tensor", "bf16": "BF16 tensor"}[column]
    if tflops is None:
        return None, f"{acc.name} has no {label} figure in its datasheet"
    return tflops, f"{acc.name} {label} dense {tflops:g} TFLOPS; {acc.source}"


def tf32_in_effect(precision: str, compute_capability, tf32_enabled: bool) -> bool:
    """Whether float32 matmuls and convolutions run as TF32 on tensor cores.

    TensorFlow does so by default (`tf.config.experimental.enable_tensor_float_32_execution`)
    on GPUs of compute capability 8.0 (Ampere) or later. Never for the 16-bit precisions
    (their matmuls are not float32) nor on CPUs (compute_capability None).
    """
    if _COLUMN.get(precision) != "fp32" or compute_capability is None or not tf32_enabled:
        return False
    return tuple(compute_capability) >= AMPERE
