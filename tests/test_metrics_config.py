"""Pure-Python pieces: statistics of timed windows, the timer, config validation and schedules."""

import math

import pytest

from bench.config import defaults, options, recipe, validation
from bench.config.options import ConfigError, RunConfig
from bench.results import metrics
from bench.runner import timing


def test_window_throughput_agrees_with_the_clock():
    windows = [(10, 2.0), (10, 2.5), (10, 2.0), (5, 1.0)]
    t = metrics.window_throughput(windows, 128)
    assert t.images_per_sec == pytest.approx(35 * 128 / 7.5)
    rates = [640.0, 512.0, 640.0, 640.0]
    assert t.jitter == 0.0  # median 640, MAD 0
    mean = sum(rates) / 4
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / 3)
    assert t.images_per_sec_stderr == pytest.approx(sd / 2)
    assert t.step_time_p50_ms == pytest.approx(200.0)
    assert t.step_time_p99_ms == pytest.approx(248.5)  # sorted 200,200,200,250 at position 2.97
    assert (t.timed_steps, t.windows) == (35, 4)


def test_mfu_and_ci():
    assert metrics.mfu(245e6, 1000, 490e9) == pytest.approx(0.5)
    assert metrics.mfu(1, 1, 0) is None
    m, h = metrics.mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert metrics.mean_ci95([5.0]) == (5.0, 0.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_chrono_keeps_compile_and_warmup_out_of_the_windows():
    clock = FakeClock()
    synced = []
    chrono = timing.Chrono(sync=lambda value=None: synced.append(value), clock=clock)

    def window(seconds, steps, kind):
        chrono.begin()
        clock.now += seconds
        chrono.end(steps, kind, seconds)

    window(30.0, steps=1, kind="first")  # trace + compile
    window(2.0, steps=10, kind="warmup")
    for _ in range(3):
        window(1.0, steps=10, kind="timed")
    assert synced.count(None) == 5 and synced.count(1.0) == 3  # synced before and after every call
    t = chrono.throughput(100)
    assert t.images_per_sec == pytest.approx(1000.0)  # 30 steps x 100 images / 3 s
    assert chrono.compile_seconds() == pytest.approx(29.9)
    assert chrono.train_seconds == pytest.approx(35.0)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"strategy": "multi_worker"}, "needs --workers"),
        ({"strategy": "tpu"}, "choose one of"),
        ({"n": 0}, "--n must be >= 1"),
        ({"precision": "fp64"}, "precision"),
        ({"block": "wide"}, "block"),
        ({"cpu_replicas": 0}, "cpu_replicas"),
        ({"cpu_replicas": 2}, "needs --strategy=mirrored"),
        ({"steps": 10, "epochs": 1.0}, "not both"),
        ({"steps_per_loop": 0}, "steps_per_loop"),
        ({"data": "files"}, "needs --cifar_dir"),
        ({"target_accuracy": 91.0}, "fraction"),
        ({"target_accuracy": 0.5, "data": "synthetic"}, "real data"),
        ({"batch_norm": "cudnn"}, "batch_norm"),
        ({"batch_norm": "fused", "sync_bn": True}, "cannot synchronize"),
        ({"onednn": "yes"}, "onednn"),
    ],
)
def test_validate_rejects_with_a_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        validation.validate(RunConfig(**changes))


def test_device_defaults_are_decided_once_per_run():
    cpu = defaults.resolve(RunConfig(), "CPU", 1, "files")
    assert (cpu.xla, cpu.steps_per_loop, cpu.batch_norm) == (False, 10, "fused")
    gpu = defaults.resolve(RunConfig(strategy="mirrored"), "GPU", 8, "files")
    assert (gpu.xla, gpu.steps_per_loop, gpu.batch_norm) == (True, 50, "fused")
    # XLA only where it is valid: not sync BN's nor fit's all-reduces over replicas; one replica: always
    assert defaults.resolve(RunConfig(strategy="mirrored", sync_bn=True), "GPU", 2, "files").xla is False
    assert defaults.resolve(RunConfig(strategy="mirrored", sync_bn=True), "GPU", 2, "files").batch_norm == "keras"
    assert defaults.resolve(RunConfig(loop="fit", strategy="mirrored"), "GPU", 2, "files").xla is False
    assert defaults.resolve(RunConfig(loop="fit"), "GPU", 1, "files").xla is True
    # what the user set is kept
    kept = defaults.resolve(RunConfig(xla=False, steps_per_loop=7, batch_norm="keras"), "GPU", 1, "files")
    assert (kept.xla, kept.steps_per_loop, kept.batch_norm) == (False, 7, "keras")
    assert defaults.resolve_augment(RunConfig(), "GPU", "files") == "device"
    assert defaults.resolve_augment(RunConfig(), "CPU", "files") == "host"
    assert defaults.resolve_augment(RunConfig(loop="fit"), "GPU", "files") == "host"
    assert defaults.resolve_augment(RunConfig(augment="device"), "CPU", "synthetic") == "none"


def test_validate_normalises_precision_aliases():
    assert validation.validate(RunConfig(precision="bf16")).precision == "mixed_bfloat16"
    assert validation.validate(RunConfig(precision="fp16")).precision == "mixed_float16"


def test_steps_from_epochs_recipe_and_warmup_check():
    assert recipe.train_steps(RunConfig(epochs=2.0, batch_size=100)) == 1000
    assert recipe.train_steps(RunConfig(recipe="paper")) == 64000
    assert recipe.train_steps(RunConfig(recipe="paper", batch_size=256)) == 32000
    with pytest.raises(ConfigError, match="warm-up"):
        validation.check_steps(RunConfig(warmup_steps=20), 20)


def _lr(optimizer, iteration):
    """The learning rate the optimizer applies at a 0-based step (what trains, not a copy of the rule)."""
    optimizer.iterations.assign(iteration)
    return float(optimizer.learning_rate)


def test_paper_schedule_is_the_optimizers():
    from bench.training.steps import make_optimizer

    s = recipe.lr_schedule(RunConfig(recipe="paper", n=18), 64000)
    assert s.starts == (0, 400, 32000, 48000)
    opt = make_optimizer(s, "float32")
    lrs = {step: _lr(opt, step) for step in (0, 399, 400, 31999, 32000, 47999, 48000, 63999)}
    assert lrs[0] == lrs[399] == pytest.approx(0.01) and lrs[400] == lrs[31999] == pytest.approx(0.1)
    assert lrs[32000] == lrs[47999] == pytest.approx(0.01) and lrs[48000] == lrs[63999] == pytest.approx(0.001)
    s20 = recipe.lr_schedule(RunConfig(recipe="paper", n=3, batch_size=256), 32000)
    assert s20.starts == (0, 16000, 24000) and s20.values == pytest.approx((0.2, 0.02, 0.002))
    opt20 = make_optimizer(s20, "mixed_float16")  # the loss-scaled wrapper trains on the same schedule
    assert _lr(opt20.inner_optimizer, 15999) == pytest.approx(0.2) and _lr(
        opt20.inner_optimizer, 16000
    ) == pytest.approx(0.02)


def test_profile_steps_parse():
    assert options.parse_profile_steps("20,25") == (20, 25)
    for bad in ("20", "a,b", "25,20", "0,3"):
        with pytest.raises(ConfigError, match="profile_steps"):
            options.parse_profile_steps(bad)


def test_a_workers_threads_default_to_its_reserved_cpus():
    worker = RunConfig(strategy="multi_worker", workers=2, cpus_per_worker=1.5)
    assert defaults.intra_op_threads(worker) == 2
    assert defaults.intra_op_threads(worker.replace(intra_op_threads=4)) == 4
    assert defaults.intra_op_threads(RunConfig()) is None  # TensorFlow's own choice
