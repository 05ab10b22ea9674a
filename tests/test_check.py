"""python -m bench.check: the self-check passes here, writes only the system description, refuses bad flags, can fail."""

import io
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from bench import check
from bench.hardware import peak
from bench.selfcheck import env
from bench.training import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(folder):
    """{path: (size, mtime)} of every file under `folder` (empty if it does not exist)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


def command(*args, cwd, timeout=600, **env):
    env = {**os.environ, "PYTHONPATH": ROOT, **env}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "bench.check", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.e2e
def test_every_check_passes_on_two_cpu_replicas_and_nothing_is_written(tmp_path):
    work, cache = tmp_path / "cwd", tmp_path / "cache"
    work.mkdir()
    before = snapshot(os.path.join(ROOT, "results"))
    out = command("--cpu_replicas=2", cwd=str(work), RESNET_BENCH_CACHE=str(cache))
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "replicas: 2 (MirroredStrategy" in out.stdout and "TensorFlow 2." in out.stdout
    assert "oneDNN CPU kernels:" in out.stdout
    for name in check.CHECKS:
        assert re.search(rf"^{name}\s+(PASS|SKIP)\s", out.stdout, re.M), (name, out.stdout)
    assert re.search(r"^peak_vs_datasheet\s+SKIP .*\(no datasheet figure for ", out.stdout, re.M)
    assert "Traceback" not in out.stdout + out.stderr
    assert snapshot(os.path.join(ROOT, "results")) == before
    # no results file, no peak cache: only the machine's system description beside the default results path
    assert os.listdir(work) == ["results"] and os.listdir(work / "results") == ["systems"] and not cache.exists()
    assert [name.endswith(".json") for name in os.listdir(work / "results" / "systems")] == [True]


@pytest.mark.e2e
def test_bad_flags_are_one_line_and_exit_2(tmp_path):
    out = command("--only=bad_name", cwd=str(tmp_path), timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad_name" in lines[0], out.stderr
    helped = command("--help", cwd=str(tmp_path), timeout=120)
    assert helped.returncode == 0 and "--only" in helped.stdout and "fp16_overflow_skipped" in helped.stdout


@pytest.mark.slow  # the whole fp16 check twice: end to end
def test_without_the_overflow_agreement_the_fp16_check_fails_and_the_tool_exits_1(monkeypatch):
    """Bypass the replicas' agreement on overflow (the Keras 3.15 behaviour): replica 0's finite local
    gradients let the step through, the inf from replica 1 is summed into every replica's weights."""
    no_agreement = staticmethod(lambda ctx, grads: (grads, tf.constant(0, tf.int64)))
    monkeypatch.setattr(steps.StepFunctions, "_agree_on_overflow", no_agreement)
    out = io.StringIO()
    assert check.run(["fp16_overflow_skipped"], cpu_replicas=2, out=out) == 1
    text = out.getvalue()
    assert re.search(r"^fp16_overflow_skipped\s+FAIL\s", text, re.M), text
    assert "FAIL inf on replica 1 of 2 at step 2" in text and "FAIL skipped_steps counted 0 = 1" in text
    assert "0 passed, 0 skipped, 1 failed" in text


def test_an_error_inside_a_check_is_a_one_line_fail(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such device\nsecond line of the message")

    monkeypatch.setattr(peak, "measure", broken)
    out = io.StringIO()
    assert check.run(["peak_vs_datasheet"], cpu_replicas=2, out=out) == 1
    text = out.getvalue()
    assert re.search(r"^peak_vs_datasheet\s+FAIL .*FAIL error: RuntimeError: no such device$", text, re.M), text
    assert "second line" not in text and "Traceback" not in text


def test_comparisons_fail_outside_their_tolerance():
    ok, text = env.loss_item("x:", 2.0, 2.0 + 1e-3, rtol=0.0)
    assert not ok and "≤ 0" in text
    assert env.loss_item("x:", 2.0, 2.0, rtol=0.0)[0]
    assert not env.loss_item("x:", float("nan"), float("nan"), rtol=1.0)[0]
    start = [tf.zeros(3).numpy()]
    items = env.update_items("x:", [tf.ones(3).numpy()], [tf.ones(3).numpy() * 1.01], start)
    assert [ok for ok, _ in items] == [True, False]
    assert env.verdict("c", items).status == "FAIL"
    assert env.verdict("c", [(True, "fine")], skip="why").status == "SKIP"
