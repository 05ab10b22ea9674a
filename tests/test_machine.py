"""What a run knows about its machine: memory, the CPU's and GPUs' state during the timed windows, the windows'
stability (issue #26, items 1-4).

Pure parts with supplied values (the columns, the bounds, NVML's readings from a fake library, the monitor
with fake psutil readings, the controller's call order), NVML itself on this machine (no NVIDIA GPU), and
real tiny runs: a run's row has the columns filled, a window slowed on purpose makes it `unstable`, and a
run while two CPU-burning processes load both cores is `contended`.
"""

import dataclasses
import os
import subprocess
import sys
import time

import pytest
from fake_nvml import FakeNvml, gpu

from bench.config.options import RunConfig
from bench.hardware import machine, nvml
from bench.results import conditions, console, rows, table
from bench.results.conditions import MachineState
from bench.runner import benchmark
from bench.runner.loop import Controller, Plan
from bench.training import trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n=1, batch_size=16, data="synthetic", warmup_steps=2)


# ---------------------------------------------------------------------------
# Stability of the timed windows


def test_steady_windows_are_stable_and_one_slow_window_is_not():
    steady = conditions.stability_columns([(2, 0.100), (2, 0.102), (2, 0.099), (2, 0.101)], 16)
    assert steady["rate_cv"] < 0.02 and steady["slowest_window_ratio"] < 1.05 and steady["unstable"] is False
    slow = conditions.stability_columns([(2, 0.1), (2, 0.1), (2, 0.4), (2, 0.1), (2, 0.1)], 16)
    assert slow["slowest_window_ratio"] == pytest.approx(4.0) and slow["unstable"] is True
    # spread without one outlier: the CV alone decides (rates 100..150 img/s: CV ~ 16%)
    spread = conditions.stability_columns([(1, 16 / r) for r in (100, 120, 150, 110, 140)], 16)
    assert spread["slowest_window_ratio"] < conditions.SLOWEST_BOUND and spread["rate_cv"] >= conditions.CV_BOUND
    assert spread["unstable"] is True


def test_too_few_windows_are_not_judged():
    two = conditions.stability_columns([(2, 0.1), (2, 0.5)], 16)
    assert two["rate_cv"] > 0 and two["unstable"] is None  # a CV of two windows, but no verdict
    assert conditions.stability_columns([(10, 1.0)], 16) == {
        "rate_cv": None,
        "slowest_window_ratio": None,
        "unstable": None,
    }


# ---------------------------------------------------------------------------
# The machine's state as columns


def state(**changes):
    base = dict(
        peak_rss_mb=800.0,
        peak_anon_mb=400.0,
        timed_wall_s=10.0,
        process_cpu_s=19.0,
        machine_busy_s=19.6,
        cores=2,
        cores_available=2,
        load_avg_1m=2.1,
        cpu_mhz=2445.0,
        notes=("GPU: no NVIDIA GPU",),
    )
    return MachineState(**{**base, **changes})


def test_a_quiet_single_process_run():
    cols = conditions.state_columns([("vm", "", state())])
    assert cols["cpu_share"] == pytest.approx(0.95) and cols["others_cpu_share"] == pytest.approx(0.03)
    assert cols["contended"] is False and cols["peak_rss_mb"] == 800.0 and cols["peak_rss_by_host"] == "vm 800"
    assert cols["peak_anon_mb"] == 400.0
    assert cols["gpu_mem_peak_mb"] is None and "gpu_sm_clock_start_mhz" not in cols  # empty, and why:
    assert cols["machine_notes"] == "GPU: no NVIDIA GPU"
    table.format_row({"status": "ok", **cols})  # every column is in the schema


def test_other_processes_on_the_cores_mark_the_run_contended():
    # the run got half of its 2 cores; the machine was busy all the time: others took the other half
    cols = conditions.state_columns([("vm", "", state(process_cpu_s=10.0, machine_busy_s=20.0))])
    assert cols["cpu_share"] == pytest.approx(0.5) and cols["others_cpu_share"] == pytest.approx(0.5)
    assert cols["contended"] is True
    lines = conditions.warnings({**cols, "unstable": "false"})
    assert len(lines) == 1 and "CPU was shared" in lines[0] and "50%" in lines[0] and "quieter machine" in lines[0]


def test_workers_sharing_a_machine_are_not_each_others_contention():
    # two 1-thread workers on one 2-core machine, each using its core; every busy second is theirs
    worker = state(process_cpu_s=9.5, machine_busy_s=19.4, cores_available=1, peak_rss_mb=700.0)
    cols = conditions.state_columns([("vm", "boot1", worker), ("vm", "boot1", worker)])
    assert cols["others_cpu_share"] == pytest.approx(0.02) and cols["contended"] is False
    assert cols["peak_rss_mb"] == 1400.0 and cols["peak_rss_by_host"] == "vm 1400" and cols["peak_anon_mb"] == 800.0
    # two hosts that are namespaces of one machine (the local cluster) count as one machine too
    hosts = conditions.state_columns([("node-a", "boot1", worker), ("node-b", "boot1", worker)])
    assert hosts["contended"] is False and hosts["peak_rss_by_host"] == "node-a 700; node-b 700"
    # the same workers counted per host without the machine id would see each other as "others"
    apart = conditions.state_columns([("node-a", "", worker), ("node-b", "", worker)])
    assert apart["others_cpu_share"] == pytest.approx((1.94 - 0.95) / 2)


def test_gpu_readings_become_columns_and_throttling_is_flagged():
    gpu = state(
        gpu_mem_peak_mb=(1500.0, 1480.0),
        gpu_sm_clock_start_mhz=(1410.0, 1410.0),
        gpu_sm_clock_end_mhz=(1395.0, 1230.0),
        gpu_power_limit_w=(400.0, 400.0),
        gpu_max_temp_c=(71.0, 83.0),
        gpu_throttle=("sw_thermal_slowdown",),
        notes=(),
    )
    cols = conditions.state_columns([("node1", "", gpu)])
    assert cols["gpu_mem_peak_mb"] == 1500.0 and cols["gpu_mem_peak_each_mb"] == "1500 1480"
    assert cols["gpu_sm_clock_start_mhz"] == 1410.0 and cols["gpu_sm_clock_end_mhz"] == 1230.0
    assert cols["gpu_max_temp_c"] == 83.0 and cols["gpu_power_limit_w"] == 400.0
    assert cols["throttled"] is True and cols["gpu_throttle_reasons"] == "sw_thermal_slowdown"
    warning = conditions.warnings(cols)
    assert any("lowered its clocks" in line and "1410 -> 1230 MHz" in line for line in warning)
    calm = conditions.state_columns([("node1", "", dataclasses.replace(gpu, gpu_throttle=()))])
    assert calm["throttled"] is False and calm["gpu_throttle_reasons"] == "none"


def test_a_run_without_timed_windows_or_state_leaves_the_cpu_columns_empty():
    cols = conditions.state_columns([("vm", "", state(timed_wall_s=0.0, process_cpu_s=0.0, machine_busy_s=0.0))])
    assert cols["cpu_share"] is None and cols["contended"] is None and cols["peak_rss_mb"] == 800.0
    assert conditions.state_columns([("vm", "", None)]) == {
        "machine_notes": "the run ended before its machine state was read"
    }


def test_the_console_says_what_to_do_about_an_unstable_row():
    row = {"unstable": True, "rate_cv": 0.14, "slowest_window_ratio": 1.8}
    text = "\n".join(conditions.warnings(row))
    assert "may be unstable" in text and "14%" in text and "1.80x" in text
    assert "more steps" in text.lower() and "quieter machine" in text
    assert conditions.warnings({"unstable": "false", "contended": "false"}) == []


# ---------------------------------------------------------------------------
# NVML: the library's own behaviour here (no NVIDIA GPU) and readings a fake library supplies


def test_nvml_on_this_machine_says_no_nvidia_gpu():
    import pynvml

    with pytest.raises(pynvml.NVMLError) as err:  # what the library does on a machine without the driver
        pynvml.nvmlInit()
    assert err.value.value in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    gpus = nvml.Gpus.open()
    assert gpus.handles == [] and gpus.reason == "GPU: no NVIDIA GPU"
    assert gpus.read() == [] and gpus.driver_version() is None
    gpus.close()


def test_nvml_readings_are_parsed(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeNvml([gpu("GPU-a", reasons=0x4 | 0x40 | 0x1), gpu("GPU-b", sm=1200, limit_mw=None, temp=None)])
    gpus = nvml.Gpus.open(nvml=fake)
    first, second = gpus.read()
    assert first == nvml.GpuReading(1410.0, 400.0, 65.0, ("sw_power_cap", "hw_thermal_slowdown"))  # idle (0x1) is not
    assert second == nvml.GpuReading(1200.0, None, None, ())  # not supported: unknown, never guessed
    assert gpus.describe() == [("NVIDIA A100-SXM4-80GB", 80 * 2**30)] * 2 and gpus.driver_version() == "580.65.06"
    gpus.close()
    assert fake.calls == ["shutdown"]


def test_nvml_follows_cuda_visible_devices_and_its_errors(monkeypatch):
    fake = FakeNvml([gpu("GPU-a", sm=1), gpu("GPU-b", sm=2), gpu("GPU-c", sm=3)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert [r.sm_clock_mhz for r in nvml.Gpus.open(nvml=fake).read()] == [3.0, 1.0]
    assert [r.sm_clock_mhz for r in nvml.Gpus.open(1, nvml=fake).read()] == [3.0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b")
    assert [r.sm_clock_mhz for r in nvml.Gpus.open(nvml=fake).read()] == [2.0]
    assert len(nvml.Gpus.open(nvml=fake, visible=False).handles) == 3  # the machine's, for its description
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvml.Gpus.open(nvml=fake).reason == "GPU: no NVIDIA GPU"  # CUDA sees none
    driver = FakeNvml([], init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)
    assert nvml.Gpus.open(nvml=driver).reason == "GPU: no NVIDIA GPU"
    other = nvml.Gpus.open(nvml=FakeNvml([], init_error=999))
    assert other.reason.startswith("GPU: NVML failed") and "999" in other.reason


# ---------------------------------------------------------------------------
# The monitor: readings between windows only


class FakePsutil:
    """psutil as the monitor calls it; every read advances a script of values the test supplies."""

    def __init__(self):
        self.proc = 0.0  # process CPU seconds
        self.busy = 0.0  # machine-wide busy CPU seconds
        self.load = 1.5

    def Process(self):
        ps = self
        return type("P", (), {"cpu_times": lambda self: type("T", (), {"user": ps.proc, "system": 0.0})()})()

    def cpu_times(self):
        return type(
            "T", (), {"user": self.busy, "nice": 0.0, "system": 0.0, "irq": 0.0, "softirq": 0.0, "steal": 0.0}
        )()

    def getloadavg(self):
        return (self.load, 0.0, 0.0)

    def cpu_freq(self):
        return type("F", (), {"current": 2000.0})()

    def cpu_count(self):
        return 2


class FakeGpus:
    def __init__(self, readings):
        self.readings, self.reason, self.closed = list(readings), "", False

    def read(self):
        return self.readings.pop(0)

    def close(self):
        self.closed = True


def test_the_monitor_counts_timed_windows_only():
    ps, now = FakePsutil(), [0.0]
    r = lambda sm, temp, *why: [nvml.GpuReading(sm, 300.0, temp, why)]  # noqa: E731
    gpus = FakeGpus([r(1400, 60), r(1390, 70, "sw_power_cap"), r(1380, 66)])
    mon = machine.MachineMonitor(
        gpu_count=1, intra_op_threads=1, open_gpus=lambda *a, **k: gpus, ps=ps, clock=lambda: now[0]
    )
    mon.start()

    def window(kind, seconds, proc, busy):
        mon.before(kind)
        now[0] += seconds
        ps.proc += proc
        ps.busy += busy
        mon.after(kind)
        ps.busy += 5.0  # between windows (evaluation, others): never counted

    window("first", 3.0, 3.0, 6.0)
    window("warmup", 1.0, 1.0, 2.0)
    window("timed", 1.0, 0.9, 1.8)
    ps.load = 3.0
    window("timed", 2.0, 1.9, 3.8)
    got = mon.state()
    assert (
        got.timed_wall_s == 3.0 and got.process_cpu_s == pytest.approx(2.8) and got.machine_busy_s == pytest.approx(5.6)
    )
    assert got.cores == 2 and got.cores_available == 1 and got.load_avg_1m == 3.0 and got.cpu_mhz == 2000.0
    assert got.gpu_sm_clock_start_mhz == (1400.0,) and got.gpu_sm_clock_end_mhz == (1380.0,)
    assert got.gpu_max_temp_c == (70.0,) and got.gpu_throttle == ("sw_power_cap",) and got.gpu_power_limit_w == (300.0,)
    assert got.peak_rss_mb > 10 and 0 < got.peak_anon_mb <= got.peak_rss_mb  # this process's, since start()
    cols = conditions.state_columns([("vm", "", got)])
    assert cols["cpu_share"] == pytest.approx(2.8 / 3.0) and cols["throttled"] is True


def test_a_cpu_run_notes_why_its_gpu_columns_are_empty():
    mon = machine.MachineMonitor(ps=FakePsutil())
    mon.start()  # real NVML: no NVIDIA GPU here
    got = mon.state()
    assert "GPU: no NVIDIA GPU" in got.notes and "CPU state: no timed window" in got.notes
    assert got.gpu_sm_clock_start_mhz == () and got.timed_wall_s == 0.0


class Events:
    def __init__(self):
        self.log = []


class RecordingChrono:
    """A Chrono's interface recording when its clock starts and stops; a window lasts what the workload says."""

    def __init__(self, events, clock):
        from bench.runner.timing import Chrono

        self.inner = Chrono(sync=lambda value=None: None, clock=clock)
        self.events = events

    def begin(self):
        self.events.log.append("clock starts")
        self.inner.begin()

    def end(self, steps, kind, value=None):
        seconds = self.inner.end(steps, kind, value)
        self.events.log.append("clock stops")
        return seconds

    def __getattr__(self, name):
        return getattr(self.inner, name)


class SlowWindowWorkload:
    """Each call advances a fake clock: 50 ms a step, one call 4x slower (a window stolen from)."""

    can_evaluate, fixed_window, drives_own_loop, value_name, xla_scope = False, None, False, "loss", "none"

    def __init__(self, now, slow_call=None, events=None):
        self.now, self.calls, self.slow_call, self.events = now, 0, slow_call, events

    def run_steps(self, num_steps):
        self.calls += 1
        if self.events:
            self.events.log.append("device work")
        self.now[0] += 0.05 * num_steps * (4 if self.calls == self.slow_call else 1)
        return 1.0

    def steps_done(self):
        return 0

    def skipped_steps(self):
        return None

    def learning_rate(self):
        return None


class RecordingMonitor:
    def __init__(self, events):
        self.events = events

    def start(self):
        self.events.log.append("start")

    def before(self, kind):
        self.events.log.append(f"read before {kind}")

    def after(self, kind):
        self.events.log.append(f"read after {kind}")

    def state(self):
        return MachineState(peak_rss_mb=1.0)


def controller_run(slow_call=None, events=None, monitor=None):
    now = [0.0]
    plan = Plan(total_steps=16, warmup_steps=2, steps_per_loop=2)
    workload = SlowWindowWorkload(now, slow_call, events)
    controller = Controller(plan, workload, 16, out=open(os.devnull, "w"), monitor=monitor, clock=lambda: now[0])
    controller.chrono = RecordingChrono(events or Events(), lambda: now[0])
    return controller.run()


def test_the_controller_reads_the_machine_only_between_windows():
    events = Events()
    measured = controller_run(events=events, monitor=RecordingMonitor(events))
    log = events.log
    assert log[0] == "start" and measured.machine == MachineState(peak_rss_mb=1.0)
    for i, entry in enumerate(log):
        if entry == "device work":  # every window: read, clock, work, clock, read
            assert log[i - 2].startswith("read before") and log[i - 1] == "clock starts"
            assert log[i + 1] == "clock stops" and log[i + 2].startswith("read after")
    assert log.count("device work") == 9 and log.count("read before timed") == 7


def test_a_window_stolen_from_makes_the_row_unstable():
    steady = controller_run()
    uneven = controller_run(slow_call=5)  # the 3rd of 7 timed windows takes 4x as long
    assert len(steady.windows) == len(uneven.windows) == 7
    calm = conditions.stability_columns(steady.windows, 16)
    assert calm["rate_cv"] == pytest.approx(0.0, abs=1e-9) and calm["unstable"] is False
    shaky = conditions.stability_columns(uneven.windows, 16)
    assert shaky["slowest_window_ratio"] == pytest.approx(4.0) and shaky["unstable"] is True


# ---------------------------------------------------------------------------
# Real tiny runs


def test_a_runs_row_has_the_machine_columns(tmp_path):
    path = str(tmp_path / "summary.csv")
    out = benchmark.run(RunConfig(steps=14, steps_per_loop=2, results=path, **SMALL), command="test")
    row = table.read_rows(path)[0]
    assert out.status == "ok"
    number = lambda key: float(row[key])  # noqa: E731 - a filled column parses
    assert 100 < number("peak_rss_mb") < 16000 and row["peak_rss_by_host"].endswith(f" {number('peak_rss_mb'):.0f}")
    assert 50 < number("peak_anon_mb") <= number("peak_rss_mb")
    assert number("load_avg_1m") >= 0 and 0 < number("cpu_share") <= 1.5 and 0 <= number("others_cpu_share") <= 1
    assert row["contended"] in ("true", "false") and row["unstable"] in ("true", "false")
    assert number("rate_cv") >= 0 and number("slowest_window_ratio") >= 1
    assert row["cpu_mhz"] or "CPU frequency: not reported by the OS" in row["machine_notes"]
    for gpu_column in ("gpu_mem_peak_mb", "gpu_sm_clock_start_mhz", "gpu_power_limit_w", "throttled"):
        assert row[gpu_column] == ""
    assert "GPU: no NVIDIA GPU" in row["machine_notes"]
    assert int(row["total_flops"]) == rows.flops_per_image(RunConfig(**SMALL)) * 16 * 14
    assert row["peak_origin"].startswith("measured: float32 matmuls, 20")
    assert os.path.isfile(os.path.join(str(tmp_path), "systems", row["system"] + ".json"))
    assert row["launcher"] == ""
    summary = console.summary_text(out.row, path)
    assert "peak RSS" in summary and "GPU: no NVIDIA GPU" in summary


@pytest.mark.slow  # a real run with a window slept through: end to end
def test_a_sleeping_window_marks_a_real_run_unstable(tmp_path, monkeypatch):
    real, calls = trainers.CustomLoopTrainer.run_steps, [0]

    def run_steps(self, num_steps):
        calls[0] += 1
        value = real(self, num_steps)
        if calls[0] == 5:  # the 3rd timed window: a thread of the window's process sleeps in it
            time.sleep(1.5)
        return value

    monkeypatch.setattr(trainers.CustomLoopTrainer, "run_steps", run_steps)
    path = str(tmp_path / "summary.csv")
    out = benchmark.run(RunConfig(steps=16, steps_per_loop=2, results=path, **SMALL))
    windows = out.measured.windows
    slowest = max(range(len(windows)), key=lambda i: windows[i][1] / windows[i][0])
    assert len(windows) == 7 and slowest == 2 and windows[2][1] > 1.5
    row = table.read_rows(path)[0]
    assert row["unstable"] == "true" and float(row["slowest_window_ratio"]) >= 3
    assert "may be unstable" in console.summary_text(out.row, path)


@pytest.mark.slow
def test_a_run_while_two_processes_burn_both_cores_is_contended(tmp_path):
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(1.0)
        path = str(tmp_path / "summary.csv")
        out = benchmark.run(RunConfig(steps=14, steps_per_loop=3, results=path, **SMALL))
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    row = table.read_rows(path)[0]
    assert out.status == "ok" and row["contended"] == "true"
    assert float(row["others_cpu_share"]) >= conditions.CONTENDED_BOUND  # the burners' share, at least
    assert "CPU was shared" in console.summary_text(out.row, path)


@pytest.mark.e2e
def test_peak_memory_grows_with_batch_and_depth_and_the_report_plots_it(tmp_path):
    """A 2x2 run (n 1 and 3, batch 16 and 64), each its own bench.run process; then the report."""
    from helpers import seed_peak_cache

    from sweeps import report

    path, cache = str(tmp_path / "summary.csv"), str(tmp_path / "cache")
    seed_peak_cache(cache)  # a run that measures the peak FLOP/s first holds ~50 MB more (oneDNN's matmul caches)
    env = {**os.environ, "PYTHONPATH": ROOT, "RESNET_BENCH_CACHE": cache}
    for n in (1, 3):
        for batch in (16, 64):
            args = ["--n", str(n), "--batch_size", str(batch), "--data", "synthetic", "--steps", "8"]
            args += ["--warmup_steps", "2", "--steps_per_loop", "3", "--results", path]
            done = subprocess.run([sys.executable, "-m", "bench.run", *args], env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
    anon = {(int(r["n"]), int(r["global_batch_size"])): float(r["peak_anon_mb"]) for r in table.read_rows(path)}
    rss = {(int(r["n"]), int(r["global_batch_size"])): float(r["peak_rss_mb"]) for r in table.read_rows(path)}
    # measured here: 306 / 340 / 355 / 431 MB anonymous (twice, within 6 MB); activations grow with both
    assert anon[1, 64] > anon[1, 16] + 10 and anon[3, 64] > anon[3, 16] + 10, anon
    assert anon[3, 16] > anon[1, 16] + 10 and anon[3, 64] > anon[1, 64] + 10, anon
    assert all(rss[k] >= anon[k] for k in anon)
    md, pngs = report.build(path, str(tmp_path / "report"))
    plot = [p for p in pngs if p.endswith("peak_memory_vs_depth.png")]
    assert len(plot) == 1 and os.path.getsize(plot[0]) > 5000
    lines = [line for line in open(md).read().splitlines() if line.startswith("| – |")]
    assert len(lines) == 4 and all(" anon) |" in line for line in lines)
