"""The results table: schema, whole rows under concurrency, foreign headers refused."""

import csv
import functools
import io
import multiprocessing
import os

import pytest

from bench.results import table


def row(i, **extra):
    return {
        "run_id": f"run{i:04d}",
        "status": "ok",
        "n": 3,
        "images_per_sec": 1234.5678 + i,
        "command": 'python -m bench.run --n 3 --note "quoted, with comma"',
        **extra,
    }


def _writer(path, start, count):
    for i in range(start, start + count):
        table.append_row(path, row(i))


def test_header_once_and_values_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "summary.csv")
    assert table.append_row(path, row(1, xla=True, error="line one\nline two"))
    assert table.append_row(path, row(2))
    with open(path) as fh:
        text = fh.read()
    assert text.count("run_id,timestamp_utc") == 1
    rows = table.read_rows(path)
    assert [r["run_id"] for r in rows] == ["run0001", "run0002"]
    assert tuple(rows[0]) == table.SCHEMA
    assert rows[0]["xla"] == "true" and rows[0]["error"] == "line one\nline two"
    assert rows[0]["command"].endswith('"quoted, with comma"')


def test_same_run_id_is_written_once(tmp_path):
    path = str(tmp_path / "summary.csv")
    assert table.append_row(path, row(1))
    assert not table.append_row(path, row(1))
    assert len(table.read_rows(path)) == 1


def test_concurrent_writers_keep_every_row_whole(tmp_path):
    path = str(tmp_path / "summary.csv")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 100, 15)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = table.read_rows(path)
    assert sorted(r["run_id"] for r in rows) == sorted(f"run{k * 100 + i:04d}" for k in range(4) for i in range(15))
    with open(path, newline="") as fh:
        raw = list(csv.reader(fh))
    assert all(len(r) == len(table.SCHEMA) for r in raw)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_foreign_header_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("run_id,speed\nx,1\n")
    with pytest.raises(table.ResultsError, match=r"not a results table \(header: column 2 is 'speed'"):
        table.check_results_path(str(path))
    with pytest.raises(table.ResultsError):
        table.append_row(str(path), row(1))
    assert path.read_text() == "run_id,speed\nx,1\n"


def test_file_of_an_older_schema_takes_no_rows_until_upgraded(tmp_path):
    """Appending to it would drop this version's new columns (a row's `mode`, `onednn`, ...) or rewrite
    the user's file; it is refused untouched, and `python -m bench.results upgrade` converts it on request."""
    path = tmp_path / "summary.csv"
    old_schema = [c for c in table.SCHEMA if c != "onednn"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, old_schema, lineterminator="\n")
        writer.writeheader()
        writer.writerow(
            {
                "run_id": "old1",
                "status": "ok",
                "xla": "true",
                "images_per_sec": "151.2",
                "command": "python -m bench.run --x, y",
            }
        )
    original = path.read_bytes()
    with pytest.raises(table.ResultsError, match="older version .*onednn.* upgrade"):
        table.check_results_path(str(path))
    with pytest.raises(table.ResultsError, match="older version"):
        table.append_row(str(path), row(2))
    assert path.read_bytes() == original
    table.check_header(str(path))  # readable as it is (the report reads it)
    table.upgrade(str(path))
    assert table.append_row(str(path), row(2, onednn=True))
    rows = table.read_rows(str(path))
    assert tuple(rows[0]) == table.SCHEMA
    assert [r["run_id"] for r in rows] == ["old1", "run0002"]
    assert rows[0]["onednn"] == "" and rows[1]["onednn"] == "true"
    assert rows[0]["xla"] == "true" and rows[0]["images_per_sec"] == "151.2"
    assert rows[0]["command"] == "python -m bench.run --x, y"
    # columns in another order, or unknown ones, are not an older schema
    reordered = tmp_path / "reordered.csv"
    reordered.write_text(",".join(reversed(old_schema)) + "\n")
    with pytest.raises(table.ResultsError, match="not a results table"):
        table.check_results_path(str(reordered))


def test_hard_linked_table_is_refused(tmp_path):
    path = tmp_path / "summary.csv"
    assert table.append_row(str(path), row(1))
    os.link(path, tmp_path / "other.csv")
    with pytest.raises(table.ResultsError, match="2 hard links"):
        table.append_row(str(path), row(2))
    assert len(table.read_rows(str(tmp_path / "other.csv"))) == 1


def test_a_change_made_without_the_lock_is_not_overwritten(tmp_path, monkeypatch):
    path = tmp_path / "summary.csv"
    assert table.append_row(str(path), row(1))
    reads = []
    real_read = table._read_bytes

    def read_then_edit(p):  # an editor saves the file between the writer's read and its replace
        data = real_read(p)
        reads.append(p)
        if len(reads) == 1:
            with open(p, "a") as fh:
                fh.write("user,edit\n")
        return data

    monkeypatch.setattr(table, "_read_bytes", read_then_edit)
    with pytest.raises(table.ResultsError, match="changed while"):
        table.append_row(str(path), row(2))
    assert path.read_text().endswith("user,edit\n")


def test_unwritable_places_are_refused(tmp_path):
    from bench.config import options, validation

    with pytest.raises(table.ResultsError, match="folder"):
        table.check_results_path(str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    # the up-front check creates a probe file: as root, os.access says yes to /proc
    for bad in (blocker / "summary.csv", "/proc/newcomer.csv", "/proc/no/such/dir/s.csv"):
        with pytest.raises(options.ConfigError, match="not a writable folder"):
            validation.validate(options.RunConfig(results=str(bad)))
    assert not os.path.exists("/proc/newcomer.csv") and os.listdir(tmp_path) == ["file"]


def test_rows_are_checked_against_the_schema():
    with pytest.raises(KeyError, match="speed"):
        table.format_row({"run_id": "x", "status": "ok", "speed": 1})
    with pytest.raises(ValueError, match="status"):
        table.format_row({"run_id": "x", "status": "great"})
    assert table.format_row({"run_id": "x", "status": "ok"}).endswith("\n")


def test_a_row_no_file_can_take_is_printed_on_stderr(tmp_path, monkeypatch):
    # No lock file can be made in /proc: the append waits out its lock timeout (120 s by default) first.
    monkeypatch.setattr(table, "append_row", functools.partial(table.append_row, lock_timeout=1))
    err = io.StringIO()
    assert table.save_row("/proc/nowhere.csv", row(7), err=err) == "stderr"
    text = err.getvalue()
    assert text.startswith("error: the row was not added to /proc/nowhere.csv")
    printed = list(csv.DictReader(io.StringIO(text.split("\n", 1)[1])))
    assert [r["run_id"] for r in printed] == ["run0007"] and printed[0]["command"] == row(7)["command"]
    assert not os.path.exists("/proc/nowhere.csv")


def older_table(path):
    """A table of an earlier schema (no `onednn` column) with one row; its bytes."""
    old_schema = [c for c in table.SCHEMA if c != "onednn"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, old_schema, lineterminator="\n")
        writer.writeheader()
        writer.writerow({"run_id": "old1", "status": "ok", "xla": "true"})
    return open(path, "rb").read()


def test_an_upgrade_that_cannot_replace_the_file_leaves_nothing_and_a_retry_works(tmp_path, monkeypatch):
    """An immutable file (`chattr +i`): the replace fails. The copy `.before-upgrade` and the lock it made are
    removed, the file is as it was, and the next try (once the file can be replaced) upgrades it."""
    path = tmp_path / "old.csv"
    original = older_table(path)
    real_replace = os.replace

    def immutable(src, dst):
        raise PermissionError(1, "Operation not permitted", dst)

    monkeypatch.setattr(table.os, "replace", immutable)
    for _ in range(2):  # every retry fails the same way, never on what the last one left ("File exists")
        with pytest.raises(PermissionError, match="Operation not permitted"):
            table.upgrade(str(path))
        assert os.listdir(tmp_path) == ["old.csv"] and path.read_bytes() == original
    monkeypatch.setattr(table.os, "replace", real_replace)
    backup = table.upgrade(str(path))
    assert open(backup, "rb").read() == original and tuple(table.read_rows(str(path))[0]) == table.SCHEMA


def test_a_copy_left_by_an_earlier_failed_upgrade_is_taken_when_it_is_the_same(tmp_path):
    path = tmp_path / "old.csv"
    original = older_table(path)
    (tmp_path / "old.csv.before-upgrade").write_bytes(original)  # what an earlier version left behind
    assert table.upgrade(str(path)) == str(tmp_path / "old.csv.before-upgrade")
    assert tuple(table.read_rows(str(path))[0]) == table.SCHEMA
    # a different file of that name is the user's: refused untouched
    other = tmp_path / "o.csv"
    older_table(other)
    (tmp_path / "o.csv.before-upgrade").write_text("mine")
    with pytest.raises(table.ResultsError, match="o.csv.before-upgrade exists"):
        table.upgrade(str(other))
    assert (tmp_path / "o.csv.before-upgrade").read_text() == "mine"


def test_upgrading_a_file_that_is_not_there_leaves_no_lock(tmp_path):
    with pytest.raises(table.ResultsError, match="no results file"):
        table.upgrade(str(tmp_path / "missing.csv"))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(table.ResultsError, match="is a folder, not a results file"):
        table.upgrade(str(tmp_path / "folder.csv"))
    (tmp_path / "empty.csv").write_bytes(b"")  # a table without rows: nothing to convert, nothing left beside it
    with pytest.raises(table.ResultsError, match="is empty: there is nothing to upgrade"):
        table.upgrade(str(tmp_path / "empty.csv"))
    assert sorted(os.listdir(tmp_path)) == ["empty.csv", "folder.csv"]
