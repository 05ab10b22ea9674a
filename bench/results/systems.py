"""System descriptions beside the results table: `<results folder>/systems/<name>.json`, one per machine.

A description (`bench.hardware.system.describe`) holds MLPerf's system-description fields for one
machine and software stack. Its name is the host name and 8 hex digits of the SHA-256 of its
content (`name_of`), so it is written once (`write`: an existing file of that name is the same
description and is left alone) and a changed machine (more memory, a new TensorFlow) gets a new
name. Each row's `system` column names the description(s) of the machine(s) it ran on. `check`
says whether a folder's descriptions are complete and unedited and whether every row's system has
its file (`python -m bench.check` runs it). No TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile

FOLDER = "systems"
# The fields of MLPerf Training's system description (mlcommons/logging, system_desc_checker), in its order.
MLPERF_FIELDS = (
    "submitter",
    "division",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processors_per_node",
    "host_processor_model_name",
    "host_processor_core_count",
    "host_processor_vcpu_count",
    "host_processor_frequency",
    "host_processor_caches",
    "host_processor_interconnect",
    "host_memory_capacity",
    "host_storage_type",
    "host_storage_capacity",
    "host_networking",
    "host_networking_topology",
    "host_memory_configuration",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_host_interconnect",
    "accelerator_frequency",
    "accelerator_on-chip_memories",
    "accelerator_memory_configuration",
    "accelerator_memory_capacity",
    "accelerator_interconnect",
    "accelerator_interconnect_topology",
    "cooling",
    "hw_notes",
    "framework",
    "other_software_stack",
    "operating_system",
    "sw_notes",
)
# What a description must say (the list: processor model and count, cores, memory, accelerators and
# their memory, framework and versions, operating system); the machine cannot tell the others.
FILLED = (
    "host_processor_model_name",
    "host_processors_per_node",
    "host_processor_core_count",
    "host_processor_vcpu_count",
    "host_memory_capacity",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_memory_capacity",
    "framework",
    "operating_system",
)
NOT_READ = (
    "host_processor_interconnect",
    "host_storage_type",
    "host_storage_capacity",
    "host_networking",
    "host_networking_topology",
    "host_memory_configuration",
    "accelerator_host_interconnect",
    "accelerator_frequency",
    "accelerator_on-chip_memories",
    "accelerator_memory_configuration",
    "accelerator_interconnect",
    "accelerator_interconnect_topology",
    "cooling",
)


def folder(results_path):
    """Where the descriptions of a results table's machines are kept."""
    return os.path.join(os.path.dirname(os.path.abspath(results_path)), FOLDER)


def name_of(desc):
    """`<host>-<8 hex digits of the SHA-256 of the description without its name>`."""
    content = {k: v for k, v in desc.items() if k != "system_name"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    host = re.sub(r"[^A-Za-z0-9._-]", "_", str(desc.get("host_name") or "host"))
    return f"{host}-{digest}"


def path_of(results_path, name):
    return os.path.join(folder(results_path), f"{name}.json")


def write(results_path, desc):
    """Write `desc` beside the results table once (atomically); return its name. An existing file is kept."""
    name = name_of(desc)
    path = path_of(results_path, name)
    if os.path.exists(path):
        return name
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({**desc, "system_name": name}, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return name


def save(results_path, desc):
    """`write` at a run's end: a description that cannot be written is a note on stderr, never a lost row."""
    try:
        return write(results_path, desc)
    except OSError as err:
        print(
            f"note: the system description {desc.get('system_name')} could not be written in "
            f"{folder(results_path)} ({err.strerror or err})",
            file=sys.stderr,
            flush=True,
        )
        return None


def save_all(results_path, descriptions):
    """`save` several (the hosts of a multi-worker run); return their names, in order, joined by "; "."""
    descriptions = [d for d in descriptions if d]
    for desc in descriptions:
        save(results_path, desc)
    return "; ".join(dict.fromkeys(name_of(d) for d in descriptions))


def missing_fields(desc):
    """MLPerf fields absent from `desc`, and the fields it must fill that are empty."""
    absent = [f for f in MLPERF_FIELDS if f not in desc]
    empty = [f for f in FILLED if f in desc and desc[f] in ("", None)]
    return absent, empty


def check(results_path, desc, row_systems=()):
    """(ok, text) lines: this machine's description is complete, on disk and unedited; every row's system has its file.

    `row_systems`: the `system` column of the table's rows (each may name several, "; ")."""
    items = []
    absent, empty = missing_fields(desc)
    items.append(
        (
            not absent and not empty,
            f"this machine: {desc.get('system_name')}: {len(MLPERF_FIELDS)} MLPerf fields, "
            + (f"missing {', '.join(absent)}; " if absent else "")
            + (f"empty {', '.join(empty)}" if empty else f"{len(FILLED)} filled as required")
            + f" ({desc.get('host_processor_model_name')}, {desc.get('host_processor_vcpu_count')} CPUs, "
            f"{desc.get('host_memory_capacity')}, accelerators: {desc.get('accelerator_model_name')})",
        )
    )
    name = write(results_path, desc)
    items.append(_unedited(results_path, name, written=True))
    named = sorted({n.strip() for s in row_systems for n in str(s).split(";") if n.strip()} - {name})
    for other in named:
        items.append(_unedited(results_path, other))
    return items


def _unedited(results_path, name, written=False):
    """(ok, text): the file of `name` exists and its content still hashes to its name."""
    path = path_of(results_path, name)
    if not os.path.exists(path):
        return False, f"{name}: named by rows of the table, but {path} is missing"
    try:
        with open(path) as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as err:
        return False, f"{path} cannot be read as a system description ({err})"
    if name_of(saved) != name:
        return False, f"{path} was edited after it was written (its content no longer hashes to its name)"
    return True, f"{path}: {'written, ' if written else ''}unedited"
