"""The machine's caches (the measured peak FLOP/s, `--autotune`'s choices): their folder, lock, reads and writes.

A cache is an optimisation, never a failure. A cache folder that cannot be written (read-only, not a
folder, on /proc), a file that cannot be read or is not what this version wrote, an entry that is
malformed or from another version: each is one `warning:` line on stderr (one per cache file and
process; a folder that cannot be written is one line for all its caches), and the run goes on without
it: it reads what it can, measures what it must, and caches nothing that nothing measured. No
TensorFlow here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import filelock

ENV = "RESNET_BENCH_CACHE"

_warned = set()  # the cache files this process has warned about


def folder():
    """$RESNET_BENCH_CACHE, else ~/.cache/resnet-bench."""
    return os.environ.get(ENV) or os.path.join(os.path.expanduser("~"), ".cache", "resnet-bench")


def reason(exc):
    """An OSError (or any exception) in a few words: `Permission denied`, `Not a directory`, ..."""
    if isinstance(exc, filelock.Timeout):
        return "its lock is held by another process"
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a file is where its folder should be"
    if getattr(exc, "strerror", None):
        return exc.strerror
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def warn(path, text):
    """`warning: <text>` on stderr, once per cache file or folder `path` and process (later problems of it are the
    same one)."""
    if path in _warned:
        return
    _warned.add(path)
    print(f"warning: {text}", file=sys.stderr, flush=True)


def read(path, what):
    """The JSON object in the cache file `path` ({} when there is none).

    A file that cannot be read, is not JSON, or holds something else than an object is {} with a warning:
    the caller measures instead."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, NotADirectoryError):
        return {}  # no cache yet (or no cache folder: `locked` says so)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
        warn(path, f"the {what} {path} cannot be read ({reason(exc)}); measuring without it")
        return {}
    if not isinstance(data, dict):
        warn(
            path,
            f"the {what} {path} is not a cache of this version (a JSON {type(data).__name__}); measuring without it",
        )
        return {}
    return data


@contextlib.contextmanager
def locked(path, what, timeout):
    """Hold `<path>.lock` for a read-change-write of the cache file `path`; yields True, or False with a warning
    when the cache's folder cannot take the lock (then read what is there and write nothing).

    The lock file is created first by hand: where it cannot be (a read-only folder, a file where the folder
    should be, /proc), that is known at once, where filelock would wait out its whole timeout."""
    lock_path, lock = path + ".lock", None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644))
        lock = filelock.FileLock(lock_path, timeout=timeout)
        lock.acquire()
    except (OSError, filelock.Timeout) as exc:
        lock = None
        where = os.path.dirname(path)  # one line for the folder: every cache in it is read as it is
        warn(
            where,
            f"the cache folder {where} cannot be written ({reason(exc)}): the {what} and the others there "
            "are read as they are and nothing is cached",
        )
    if lock is None:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def write(path, data):
    """Replace the cache file `path` by `data` as JSON, all at once (a temporary file beside it, fsync, rename).

    Raises OSError; the temporary file is never left behind."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save(path, what, data):
    """`write`, or a warning (once) if the file cannot take it; True if saved."""
    try:
        write(path, data)
        return True
    except OSError as exc:
        warn(path, f"the {what} {path} cannot be written ({reason(exc)}); this reading is not cached")
        return False
