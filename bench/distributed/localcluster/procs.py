"""Processes and ports of the local cluster, read from /proc and the socket API (no Ray)."""

from __future__ import annotations

import os
import socket


def _free_port():
    # Bound on all addresses, so the port is free whichever address Ray binds it on.
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _stat(pid):
    """(state, ppid, start time in clock ticks) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid, start):
    """Whether the process `pid` that started at `start` still runs (a zombie has ended)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start


def _descendants(pid):
    """The pids below `pid` in the process tree, now."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _port_open(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path, lines=1):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""
