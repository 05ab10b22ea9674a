"""A worker's temporary folders (`/tmp/bench-worker-<pid>-*`): its unused results path, a non-chief's
checkpoint copies.

They are removed when the worker's run ends. A worker that was killed (its node lost, a fault
injected) cannot remove its own, so each new folder's creation first removes those of processes
that are gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

PREFIX = "bench-worker-"  # + "<pid>-": a folder whose process is gone is removed by the next worker


class ScratchFolders:
    """The temporary folders of one worker's run: `new()` makes one, `remove_all()` removes them."""

    def __init__(self):
        self.folders = []

    def new(self):
        """A new temporary folder of this process (the folders of dead processes are removed first)."""
        root = tempfile.gettempdir()
        for name in os.listdir(root):
            pid = name[len(PREFIX) :].split("-", 1)[0]
            if name.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        self.folders.append(folder)
        return folder

    def remove_all(self):
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
