"""The one writer of report files: `sweeps.report`'s summary.md and plots, the scaling table, the table comparison
(and how a table's value reads in their cells: `cell`, `whole`).

Each file is replaced whole: its bytes are made first (a figure rendered to PNG in memory), written to a
temporary file in the same folder, then renamed over the old one (`os.replace`, by
`bench.results.table.replace_atomically`: fsync, the old file's mode kept). A reader, a crash or a failing
report sees the old file or the new one, never a part. The file's folder is created if missing.
No matplotlib import: figures arrive drawn.
"""

from __future__ import annotations

import io
import math
import os

from bench.results import table

DPI = 110


def whole(v):
    """A count as the table holds it ("20.0", 20.0) as text: "20"; anything else as it is."""
    try:
        return str(int(float(v)))
    except (TypeError, ValueError):
        return str(v)


def cell(v):
    """A table's value in a report's cell: "–" for an empty one, a whole float without its ".0"."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "–"
    return whole(v) if isinstance(v, float) and v.is_integer() else str(v)


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
