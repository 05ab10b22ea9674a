"""The one writer of report files: `sweeps.report`'s summary.md and plots, the scaling table, the table comparison.

Each file is replaced whole: its bytes are made first (a figure rendered to PNG in memory), written to a
temporary file in the same folder, then renamed over the old one (`os.replace`, by
`bench.results.table.replace_atomically`: fsync, the old file's mode kept). A reader, a crash or a failing
report sees the old file or the new one, never a part. The file's folder is created if missing.
No matplotlib import: figures arrive drawn.
"""

from __future__ import annotations

import io
import os

from bench.results import table

DPI = 110


def write_text(path, text):
    """Replace `path` with `text` (UTF-8), whole."""
    _replace(path, text.encode("utf-8"))


def write_figure(fig, path):
    """Replace `path` with the matplotlib figure `fig` as a PNG, whole (rendered before anything is written)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _replace(path, buf.getvalue())


def _replace(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table.replace_atomically(path, data)
