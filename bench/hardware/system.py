"""This machine's system description, in the fields MLPerf's system description asks for: `describe()`.

What the machine itself says: the processor's model, sockets, cores and caches (/proc/cpuinfo,
/sys), its memory (psutil; a cgroup limit noted), the NVIDIA GPUs and their memory (NVML), the
frameworks' installed versions (package metadata: no TensorFlow import, so every process of a run
describes one machine alike), the operating system. MLPerf's fields that the machine cannot tell
(storage, networking, cooling, interconnects, memory configuration) stay empty and `hw_notes` says
so; submission fields (submitter, division, status) are the user's. Nothing volatile (free memory,
current clocks, load) is in it, so one machine with one software stack has one description, and
one name (`bench.results.systems.name_of`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket

import psutil

from bench.hardware import nvml as nvml_lib
from bench.results import systems

SOFTWARE = ("ray", "numpy", "tensorflow-datasets", "nvidia-ml-py", "psutil")  # beside the framework
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpuinfo():
    """{model, sockets, cores per socket, flags, hypervisor} from /proc/cpuinfo (empty where it is missing)."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return {"model": platform.processor() or platform.machine()}
    info = {"model": "", "sockets": set(), "cores": {}, "flags": set()}
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["model"] = info["model"] or fields.get("model name", "")
        socket_id = fields.get("physical id", "0")
        info["sockets"].add(socket_id)
        if "cpu cores" in fields:
            info["cores"][socket_id] = int(fields["cpu cores"])
        info["flags"].update(fields.get("flags", fields.get("Features", "")).split())
    return info


def _caches():
    """`L1d 32K, L1i 32K, L2 512K, L3 32768K` as the first CPU sees them (/sys); '' where not exposed."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    parts = []
    try:
        for index in sorted(i for i in os.listdir(root) if i.startswith("index")):
            folder = os.path.join(root, index)
            read = lambda name, f=folder: open(os.path.join(f, name)).read().strip()  # noqa: E731
            kind = {"Data": "d", "Instruction": "i"}.get(read("type"), "")
            parts.append(f"L{read('level')}{kind} {read('size')}")
    except OSError:
        return ""
    return ", ".join(parts)


def _cgroup_memory_limit():
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _os_name():
    try:
        with open("/etc/os-release") as fh:
            fields = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
        distro = fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        distro = ""
    kernel = f"{platform.system()} {platform.release()} {platform.machine()}"
    return f"{distro}, {kernel}" if distro else kernel


def _gib(n):
    return f"{n / 2**30:.1f} GiB"


def describe(open_gpus=None):
    """This machine's system description (a dict of MLPerf's fields and a few of ours), its `system_name` set."""
    cpu = _cpuinfo()
    sockets = len(cpu.get("sockets") or {"0"})
    cores = sum(cpu.get("cores", {}).values()) or psutil.cpu_count(logical=False) or 0
    gpus = (open_gpus or nvml_lib.Gpus.open)(None, visible=False)
    try:
        accelerators = gpus.describe() if not gpus.reason else []
        driver = gpus.driver_version()
    finally:
        gpus.close()
    names = sorted({name for name, _ in accelerators if name})
    memories = sorted({_gib(total) for _, total in accelerators if total})
    cgroup = _cgroup_memory_limit()
    freq = psutil.cpu_freq()
    vectors = [f for f in VECTOR_FLAGS if f in cpu.get("flags", ())]
    not_read = [f for f in systems.MLPERF_FIELDS if f in systems.NOT_READ]
    hw_notes = [f"not read by the harness: {', '.join(not_read)}"]
    if cgroup and cgroup < psutil.virtual_memory().total:
        hw_notes.append(f"this process's cgroup may use at most {_gib(cgroup)}")
    if "hypervisor" in cpu.get("flags", ()):
        hw_notes.append("a virtual machine (the CPU reports a hypervisor)")
    if vectors:
        hw_notes.append(f"vector extensions: {' '.join(vectors)}")
    if gpus.reason:
        hw_notes.append(gpus.reason)
    software = [f"Python {platform.python_version()}"] + [
        f"{p} {_version(p)}" for p in SOFTWARE if _version(p) is not None
    ]
    if driver:
        software.append(f"NVIDIA driver {driver}")
    desc = {field: "" for field in systems.MLPERF_FIELDS}
    desc.update(
        host_name=socket.gethostname(),
        number_of_nodes=1,
        host_processors_per_node=sockets,
        host_processor_model_name=cpu.get("model", ""),
        host_processor_core_count=cores // sockets if cores else "",
        host_processor_vcpu_count=psutil.cpu_count() or "",
        host_processor_frequency=f"{freq.max:.0f} MHz" if freq and freq.max else "",
        host_processor_caches=_caches(),
        host_memory_capacity=_gib(psutil.virtual_memory().total),
        accelerators_per_node=len(accelerators),
        accelerator_model_name=", ".join(names) if accelerators else "N/A",
        accelerator_memory_capacity=", ".join(memories) if accelerators else "N/A",
        framework=", ".join(
            f"{name} {_version(package)}"
            for name, package in (("TensorFlow", "tensorflow"), ("Keras", "keras"))
            if _version(package) is not None
        ),
        other_software_stack=", ".join(software),
        operating_system=_os_name(),
        hw_notes="; ".join(hw_notes),
        sw_notes="submitter, division and status are left to the user (this is not an MLPerf submission)",
    )
    desc["system_name"] = systems.name_of(desc)
    return desc
