"""NVIDIA GPUs' state through the NVIDIA Management Library (`nvidia-ml-py`, imported as `pynvml`).

`Gpus.open(count)` finds the NVML devices of the process's first `count` CUDA devices (through
CUDA_VISIBLE_DEVICES: indices or UUIDs), or says why there are none: NVML's library or driver is
missing on a machine without an NVIDIA GPU ("no NVIDIA GPU"). `Gpus.read()` returns one
`GpuReading` per device: SM clock, enforced power limit, temperature, and the reasons NVML gives
for the clocks being lowered right now. A value NVML does not support on a device is None.

The mapping assumes CUDA numbers devices as NVML does (PCI bus order); on a machine mixing GPU
models set CUDA_DEVICE_ORDER=PCI_BUS_ID, or CUDA's default (fastest first) may differ.
No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import os

from bench.results.conditions import NO_GPU

# NVML's clock event ("throttle") reasons that lower the clocks below what the load asks for. Left
# out: idle, application or user-set clocks, sync boost, display clock (not a slowdown of the run).
THROTTLING = {
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
}
# NVML errors that mean "this machine has no NVIDIA GPU (driver)", by pynvml's code names
NO_GPU_ERRORS = ("NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED", "NVML_ERROR_GPU_NOT_FOUND")


@dataclasses.dataclass(frozen=True)
class GpuReading:
    sm_clock_mhz: float | None
    power_limit_w: float | None
    temp_c: float | None
    throttle: tuple  # names from THROTTLING


def throttle_names(mask):
    """The clock-lowering reasons in an NVML clock event reasons bitmask, by name."""
    return tuple(name for name, bit in THROTTLING.items() if mask & bit)


def cuda_visible():
    """CUDA_VISIBLE_DEVICES as a list of NVML indices (ints) or UUIDs (str); None when unset."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return [int(t) if t.isdigit() else t for t in items]


class Gpus:
    """NVML handles of a process's GPUs, or `reason` why there are none. `close()` when done."""

    def __init__(self, nvml, handles, reason=""):
        self._nvml, self.handles, self.reason = nvml, list(handles), reason

    @classmethod
    def open(cls, count=None, nvml=None, visible=True):
        """The NVML devices of the first `count` CUDA devices of this process (None: all it sees).

        `visible=False`: every NVIDIA GPU of the machine, whatever CUDA_VISIBLE_DEVICES says."""
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                return cls(None, [], "GPU: nvidia-ml-py is not installed")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            return cls(None, [], f"GPU: {NO_GPU}" if _is_no_gpu(nvml, err) else f"GPU: NVML failed ({err})")
        try:
            cuda = cuda_visible() if visible else None
            ids = cuda if cuda is not None else list(range(nvml.nvmlDeviceGetCount()))
            ids = ids if count is None else ids[:count]
            handles = [
                nvml.nvmlDeviceGetHandleByUUID(i) if isinstance(i, str) else nvml.nvmlDeviceGetHandleByIndex(i)
                for i in ids
            ]
        except nvml.NVMLError as err:
            nvml.nvmlShutdown()
            return cls(None, [], f"GPU: NVML failed ({err})")
        if not handles:
            nvml.nvmlShutdown()
            return cls(None, [], f"GPU: {NO_GPU}")
        return cls(nvml, handles)

    def read(self):
        """One GpuReading per device, now."""
        return [self._read(h) for h in self.handles]

    def _read(self, handle):
        nvml = self._nvml
        clock = self._value(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        limit_mw = self._value(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        temp = self._value(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        reasons = (
            getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        mask = self._value(reasons, handle)
        return GpuReading(
            sm_clock_mhz=float(clock) if clock is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            temp_c=float(temp) if temp is not None else None,
            throttle=throttle_names(int(mask)) if mask is not None else (),
        )

    def _value(self, fn, *args):
        try:
            return fn(*args)
        except self._nvml.NVMLError:  # not supported on this device (or it went away): unknown, not guessed
            return None

    def describe(self):
        """[(name, memory total in bytes)] of the devices (for the system description)."""
        nvml = self._nvml
        out = []
        for handle in self.handles:
            name = self._value(nvml.nvmlDeviceGetName, handle)
            memory = self._value(nvml.nvmlDeviceGetMemoryInfo, handle)
            out.append(
                (name.decode() if isinstance(name, bytes) else name, getattr(memory, "total", None) if memory else None)
            )
        return out

    def driver_version(self):
        if not self._nvml:
            return None
        version = self._value(self._nvml.nvmlSystemGetDriverVersion)
        return version.decode() if isinstance(version, bytes) else version

    def close(self):
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None


def _is_no_gpu(nvml, err):
    codes = {getattr(nvml, name, None) for name in NO_GPU_ERRORS} - {None}
    return getattr(err, "value", None) in codes
