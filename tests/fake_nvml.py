"""A stand-in for pynvml (nvidia-ml-py) with readings a test supplies: the functions the harness calls."""

import collections


class FakeNvml:
    """pynvml's functions and constants as the harness calls them, with readings a test supplies."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_GPU_NOT_FOUND = 28
    NVML_ERROR_NOT_SUPPORTED = 3

    class NVMLError(Exception):
        def __init__(self, value):
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, devices, init_error=None):
        self.devices, self.init_error, self.calls = devices, init_error, []

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return next(d for d in self.devices if d["uuid"] == uuid)

    def _get(self, handle, key):
        value = handle[key]
        if value is None:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetClockInfo(self, handle, which):
        assert which == self.NVML_CLOCK_SM
        return self._get(handle, "sm")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._get(handle, "limit_mw")

    def nvmlDeviceGetTemperature(self, handle, which):
        return self._get(handle, "temp")

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._get(handle, "reasons")

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return collections.namedtuple("Memory", "total free used")(handle["memory"], 0, 0)

    def nvmlSystemGetDriverVersion(self):
        return b"580.65.06"


def gpu(uuid, sm=1410, limit_mw=400000, temp=65, reasons=0, name=b"NVIDIA A100-SXM4-80GB", memory=80 * 2**30):
    return dict(uuid=uuid, sm=sm, limit_mw=limit_mw, temp=temp, reasons=reasons, name=name, memory=memory)
