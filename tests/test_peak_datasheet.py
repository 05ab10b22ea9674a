"""MFU denominators: the datasheet table, the TF32 rule, and the measured peak (device work only)."""

import datetime
import json
import re
import time

import numpy as np
import pytest
import tensorflow as tf

from bench.hardware import datasheet, peak
from bench.results import metrics
from bench.runner.timing import device_sync
from bench.selfcheck.env import N_BLOCKS, batches, make_step_functions, random_batch
from resnet import cost

# (TF device name, precision, tf32) -> dense TFLOP/s of one device
KNOWN = [
    ("NVIDIA A100-SXM4-40GB", "float32", False, 19.5),
    ("NVIDIA A100-SXM4-80GB", "float32", True, 156.0),
    ("NVIDIA A100-PCIE-40GB", "mixed_bfloat16", False, 312.0),
    ("NVIDIA A100 80GB PCIe", "mixed_float16", False, 312.0),
    ("Tesla V100-SXM2-16GB", "float32", False, 15.7),
    ("Tesla V100-SXM2-32GB", "mixed_float16", False, 125.0),
    ("Tesla V100-PCIE-16GB", "mixed_float16", False, 112.0),
    ("NVIDIA H100 80GB HBM3", "mixed_bfloat16", False, 989.5),
    ("NVIDIA H100 80GB HBM3", "float32", True, 494.5),
    ("NVIDIA H100 80GB HBM3", "float32", False, 67.0),
    ("NVIDIA H100 PCIe", "mixed_float16", False, 756.5),
    ("NVIDIA H100 PCIe", "float32", True, 378.0),
    ("NVIDIA L4", "mixed_bfloat16", False, 121.0),
    ("NVIDIA L4", "float32", True, 60.0),
    ("Tesla T4", "mixed_float16", False, 65.0),
    ("Tesla T4", "float32", False, 8.1),
    ("NVIDIA A10", "float32", True, 62.5),
    ("NVIDIA A10", "bfloat16", False, 125.0),
    ("NVIDIA H200", "mixed_bfloat16", False, 989.5),
    ("NVIDIA H200", "float32", False, 67.0),
]


@pytest.mark.parametrize("name,precision,tf32,tflops", KNOWN)
def test_datasheet_lookup(name, precision, tf32, tflops):
    got, source = datasheet.lookup(name, precision, tf32)
    assert got == tflops
    assert "datasheet" in source and f"{tflops:g}" in source


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA A10G",
        "NVIDIA L40S",
        "NVIDIA H100 NVL",
        "NVIDIA H200 NVL",
        "NVIDIA GH200 480GB",
        "Tesla V100S-PCIE-32GB",
        "Tesla V100-SXM3-32GB",
        "NVIDIA GeForce RTX 4090",
        "AMD EPYC 7B13",
        "",
        None,
    ],
)
def test_unknown_or_other_parts_give_none(name):
    tflops, source = datasheet.lookup(name, "float32", False)
    assert tflops is None and "no datasheet figure" in source


def test_patterns_are_exclusive():
    """Every name the table knows matches exactly one entry (match() refuses ambiguity)."""
    for name, *_ in KNOWN:
        hits = [a.name for a in datasheet.ACCELERATORS if re.search(a.pattern, name.upper())]
        assert len(hits) == 1, (name, hits)


def test_precisions_the_part_lacks_give_none():
    assert datasheet.lookup("Tesla V100-SXM2-16GB", "mixed_bfloat16", False)[0] is None
    assert datasheet.lookup("Tesla T4", "float32", True)[0] is None  # no TF32 before Ampere
    with pytest.raises(ValueError):
        datasheet.lookup("NVIDIA L4", "float8", False)


def test_tf32_only_for_float32_on_ampere_and_later():
    assert datasheet.tf32_in_effect("float32", (8, 0), True)
    assert datasheet.tf32_in_effect("float32", (9, 0), True)
    assert not datasheet.tf32_in_effect("float32", (7, 5), True)  # T4
    assert not datasheet.tf32_in_effect("float32", (7, 0), True)  # V100
    assert not datasheet.tf32_in_effect("float32", (8, 0), False)  # turned off
    assert not datasheet.tf32_in_effect("mixed_bfloat16", (8, 0), True)
    assert not datasheet.tf32_in_effect("mixed_float16", (9, 0), True)
    assert not datasheet.tf32_in_effect("float32", None, True)  # CPU
    assert peak.tf32_in_effect("float32") is False  # this machine: no GPU


def test_mfu_against_the_datasheet():
    # 8 A100s in bf16: 8 * 312 = 2496 TFLOP/s; 1e5 img/s of 2.496e9 FLOP each is 2.496e14 FLOP/s: 10 %.
    # as the row computes it: the datasheet's figure per device x the devices, then metrics.mfu
    tflops, source = datasheet.lookup("NVIDIA A100-SXM4-80GB", "mixed_bfloat16", False)
    assert tflops * 8 == 8 * 312.0
    assert metrics.mfu(2.496e9, 1e5, tflops * 8 * 1e12) == pytest.approx(0.1)
    assert "A100 SXM" in source and "BF16" in source
    assert datasheet.lookup("AMD EPYC 7B13", "float32", False)[0] is None


def test_peak_syncs_on_one_element_of_the_product():
    a = tf.random.uniform((64, 64))
    b = tf.random.uniform((64, 64))
    out = peak._products(a, b, 3)
    assert out.shape == ()  # only a scalar is read back to the host
    np.testing.assert_allclose(out.numpy(), tf.matmul(a, b)[0, 0].numpy(), rtol=1e-6)


def peak_gflops(device, device_key, precision, tf32=False):
    """The cached peak's GFLOP/s (what `bench.hardware.peak.peak_gflops` returned before it left the module)."""
    return peak.peak_reading(device, device_key, precision, tf32=tf32).gflops


def test_tf32_is_part_of_the_peak_cache_key(monkeypatch):
    readings = iter([100.0, 800.0])
    monkeypatch.setattr(peak, "measure", lambda device, dtype: next(readings))
    assert peak_gflops("/gpu:0", "GPU:test-tf32", "float32") == 100.0
    assert peak_gflops("/gpu:0", "GPU:test-tf32", "float32", tf32=True) == 800.0
    assert peak_gflops("/gpu:0", "GPU:test-tf32", "float32") == 100.0  # cached, not re-measured
    with open(peak.cache_path()) as fh:
        keys = set(json.load(fh))
    assert {"GPU:test-tf32|float32|scalar-sync", "GPU:test-tf32|float32|tf32|scalar-sync"} <= keys


def test_measured_peak_bounds_a_training_run_mfu(check_env, strategies):
    """The measured CPU peak is positive and a small ResNet's training MFU against it is in (0, 1]."""
    gflops = peak.measure("/cpu:0", "float32", max_size=1024)
    assert gflops > 0
    trainer = make_step_functions(check_env, strategies[1], 16)
    it = batches(check_env, strategies[1], *random_batch(16))
    device_sync(trainer.train(it, tf.constant(2)))  # trace + warm-up
    start = time.perf_counter()
    device_sync(trainer.train(it, tf.constant(5)))
    images_per_sec = 5 * 16 / (time.perf_counter() - start)
    mfu = metrics.mfu(cost.cost(N_BLOCKS).train_flops, images_per_sec, gflops * 1e9)
    assert 0 < mfu <= 1, (mfu, gflops, images_per_sec)


def test_a_cached_peak_is_read_again_when_stale_or_read_under_load(monkeypatch):
    """Old, dateless or loaded readings are taken again; a quiet recent one is kept (no reading at all)."""
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
    recent, old = "2026-11-29T12:00:00Z", "2026-09-01T12:00:00Z"
    assert peak._why_again(None, None, now, 0.1) == "replace"
    assert peak._why_again(125.0, None, now, 0.1) == "replace"  # an entry of the version that kept no date
    assert peak._why_again({"gflops": 170.0, "measured_at": old, "load": 0.1}, None, now, 0.1) == "replace"
    assert peak._why_again({"gflops": 170.0, "measured_at": recent, "load": 0.1}, None, now, 0.1) is None
    assert peak._why_again({"gflops": 170.0, "measured_at": recent, "load": 0.1}, 180.0, now, 0.1) == "improve"
    busy = {"gflops": 125.0, "measured_at": recent, "load": 1.4}
    assert peak._why_again(busy, None, now, 0.2) == "improve"  # quieter now: read it again
    assert peak._why_again(busy, None, now, 1.2) is None  # still as busy: a new reading would say no more
    # a lower reading in a quiet moment keeps the best, and counts as the quiet reading that was missing
    readings = iter([120.0])
    monkeypatch.setattr(peak, "measure", lambda device, dtype: next(readings))
    monkeypatch.setattr(peak, "load_per_core", lambda: 0.2)
    with open(peak.cache_path(), "w") as fh:
        json.dump({peak.cache_key("CPU:stale-test", "float32"): busy}, fh)
    got = peak.peak_reading("/cpu:0", "CPU:stale-test", "float32")
    assert (got.gflops, got.readings, got.load, got.measured_at) == (125.0, 2, 1.4, recent)
    again = peak.peak_reading("/cpu:0", "CPU:stale-test", "float32")  # no third reading: `readings` is empty
    assert again == got
