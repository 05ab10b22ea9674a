"""--strategy multi_worker across hosts, on a local cluster whose nodes are hosts of their own
(bench.distributed.localcluster: own hostname, 127.0.0.x address and /tmp; needs root, skipped with
the reason elsewhere).

One module-scoped cluster, started from the README's two-node recipe (its `ray start` lines with
this test's addresses), serves every test; the node-loss tests add nodes as they need them. The
driver is always the CLI (`python -m bench.run`) in its own process, so signals, exit codes and the
console are the user's. Shared storage is a folder outside /tmp (every node but the head has its own
/tmp). Each Ray Train launch takes 1-2 minutes on the loaded 2-core machine: marked slow.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from helpers import seed_peak_cache

from bench.distributed import localcluster
from bench.distributed.localcluster import LocalCluster
from bench.distributed.localcluster.procs import _descendants
from bench.results import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--strategy=multi_worker", "--workers=2", "--data=synthetic", "--n=1", "--batch_size=16", "--warmup_steps=2"]
TIMES = os.environ.get("BENCH_MULTIHOST_TIMES")  # a JSON file the measured times are added to, if set

_available, _reason = localcluster.namespaces_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _available, reason=_reason or "namespaces available")]


def _readme_recipe(port):
    """The README's two `ray start` lines (Across machines), with this test's head address and port."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Across machines") :]
    lines = [
        line.split("ray start", 1)[1].split("#")[0].split() for line in section.splitlines() if "$ ray start" in line
    ][:2]
    assert lines[0][:1] == ["--head"] and lines[1][0].startswith("--address="), lines
    head = [a.replace("6379", str(port)) for a in lines[0]]
    other = [a.replace("node1", "127.0.0.3").replace("6379", str(port)) for a in lines[1]]
    return head, other


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _seed_peak_cache(folder):
    """A peak reading for the workers' 1-thread CPU, so no worker spends ~20 s measuring it."""
    seed_peak_cache(folder, intra=1)


@pytest.fixture(scope="module")
def shared():
    """Storage every node sees at the same path (not /tmp)."""
    folder = tempfile.mkdtemp(prefix="bench-multihost-", dir="/var/tmp")
    _seed_peak_cache(os.path.join(folder, "cache"))
    yield folder
    subprocess.run(["rm", "-rf", folder], check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    head, other = _readme_recipe(_free_port())
    c = LocalCluster(
        nodes=2, cpus_per_node=1, log_dir=str(tmp_path_factory.mktemp("cluster")), role_args=[head, other]
    ).start()
    yield c
    c.stop()


def _record(name, value):
    if TIMES:
        data = json.load(open(TIMES)) if os.path.exists(TIMES) else {}
        data[name] = round(value, 1)
        json.dump(data, open(TIMES, "w"), indent=1)


class Driver:
    """`python -m bench.run ...` in its own process; every console line kept with the time it came."""

    def __init__(self, cluster, shared, *args):
        env = {
            **os.environ,
            "PYTHONPATH": ROOT,
            "RAY_AUTH_MODE": "disabled",
            "RESNET_BENCH_CACHE": os.path.join(shared, "cache"),
        }
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.run", *TINY, f"--address={cluster.address}", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = [], []
        self._readers = [
            threading.Thread(target=self._read, args=(s, lines), daemon=True)
            for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the driver still ran after {timeout} s:\n{self.text()}") from None
        for reader in self._readers:
            reader.join(10)
        return code

    def wait_for(self, pattern, timeout, lines=None):
        """The first stdout line matching `pattern` (a regex), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in list(self.out if lines is None else lines):
                if re.search(pattern, line):
                    return when, line
            assert self.proc.poll() is None or self.out, f"the driver ended:\n{self.text()}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.text()}")

    def text(self):
        return "\n".join(line for _, line in self.out) + "\n--- stderr ---\n" + "\n".join(line for _, line in self.err)


def _wait_for_file(path, driver, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert driver.proc.poll() is None, f"the driver ended before {path}:\n{driver.text()}"
        assert time.monotonic() < deadline, f"no {path} within {timeout} s:\n{driver.text()}"
        time.sleep(0.2)
    return time.monotonic()


def _run_processes(cluster):
    """{(pid, start): command line} of the Ray actors and tasks now running on the cluster's nodes (`ray::<name>`, not idle)."""
    found = {}
    for node in cluster.nodes:
        for pid in _descendants(node["pid"]):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            stat = localcluster._stat(pid)
            # Ray Train's AutoscalingCoordinator is the cluster's (one detached actor, created by the first
            # run and shared by all later ones), not a run's
            if cmd.startswith("ray::") and not cmd.startswith(("ray::IDLE", "ray::_AutoscalingCoordinator")) and stat:
                found[(pid, stat[2])] = cmd.replace("\0", " ").strip()
    return found


def _assert_gone(pids, grace=30):
    deadline = time.monotonic() + grace
    while [p for p, s in pids if localcluster._alive(p, s)] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {p: cmd for (p, s), cmd in pids.items() if localcluster._alive(p, s)}
    assert not left, f"Ray processes of the run still running: {left}"


def _one_row(path):
    rows = table.read_rows(str(path))
    assert len(rows) == 1, rows
    return rows[0]


def _no_ray_noise(driver):
    """Nothing but the run's own lines on the console: no state dumps, no C++ log lines."""
    noise = [
        line
        for _, line in driver.out + driver.err
        if re.search(r"raylet|\[20\d\d-|core_worker|gcs_|NodeManager|Traceback|\bE\d{4} ", line)
    ]
    assert not noise, noise


# ---------------------------------------------------------------------------


def test_a_path_only_the_drivers_host_has_is_refused_naming_the_host(cluster, shared, tmp_path):
    from cifar_files import write_cifar

    local = tempfile.mkdtemp(prefix="bench-multihost-local-", dir="/tmp")  # node-b has a /tmp of its own
    try:
        cifar, _ = write_cifar(os.path.join(local, "cifar"), train_per_file=(32, 32), test=16)
        cases = {
            "cifar_dir": ["--data=files", f"--cifar_dir={cifar}"],
            "checkpoint_dir": [f"--checkpoint_dir={os.path.join(local, 'ckpt')}"],
        }
        for flag, args in cases.items():
            results = tmp_path / f"{flag}.csv"
            driver = Driver(cluster, shared, "--steps=4", f"--results={results}", *args)
            code = driver.wait(timeout=150)
            lines = [line for _, line in driver.err]
            assert code == 2 and len(lines) == 1, driver.text()
            assert f"--{flag}=" in lines[0] and "node-b (127.0.0.4)" in lines[0], lines
            assert not results.exists()
            assert (
                not any(n.startswith(".bench-host-check-") for n in os.listdir(os.path.join(local, "ckpt")))
                if flag == "checkpoint_dir"
                else True
            )
            _record(f"path check refused ({flag}), s", time.monotonic() - driver.started)
    finally:
        subprocess.run(["rm", "-rf", local], check=False)


def test_the_readme_recipe_runs_workers_on_two_hosts(cluster, shared, tmp_path):
    results = tmp_path / "summary.csv"
    before = _run_processes(cluster)
    driver = Driver(cluster, shared, "--steps=20", "--steps_per_loop=5", f"--results={results}")
    code = driver.wait(timeout=400)
    assert code == 0, driver.text()
    _assert_gone({k: v for k, v in _run_processes(cluster).items() if k not in before})
    row = _one_row(results)
    assert row["status"] == "ok" and row["num_hosts"] == "2" and row["num_workers"] == "2", row
    assert re.fullmatch(r"node-[ab] \(\+1 host\)", row["host"]) and row["total_steps"] == "20"
    assert row["peak_scope"].startswith("sum over 2 workers on 2 hosts (1 per host), all on 1 machine")
    started = [line for _, line in driver.out if line.startswith("workers: 0 on")]
    assert len(started) == 1 and {"node-a (127.0.0.3)", "node-b (127.0.0.4)"} == set(
        re.findall(r"node-\w \([\d.]+\)", started[0])
    ), started
    log = next(line for _, line in driver.out if line.startswith("Ray's own messages: ")).split(": ", 1)[1]
    assert os.path.isfile(log)
    _no_ray_noise(driver)
    _record("2-host run of 20 steps, s", time.monotonic() - driver.started)


def test_sigterm_stops_every_worker_with_a_checkpoint_and_one_interrupted_row(cluster, shared, tmp_path):
    results, ckpt = tmp_path / "summary.csv", os.path.join(shared, "ckpt-signal")
    before = _run_processes(cluster)
    driver = Driver(
        cluster,
        shared,
        "--steps=100000",
        "--steps_per_loop=5",
        f"--checkpoint_dir={ckpt}",
        "--checkpoint_every_steps=10",
        f"--results={results}",
    )
    _wait_for_file(os.path.join(ckpt, "ckpt-10.index"), driver, timeout=400)
    processes = {k: v for k, v in _run_processes(cluster).items() if k not in before}
    assert len(processes) >= 3, processes  # two workers, the Train controller, the collector
    sent = time.monotonic()
    driver.proc.send_signal(signal.SIGTERM)
    code = driver.wait(timeout=120)
    assert code == 143, driver.text()
    _record("SIGTERM to exit, s", time.monotonic() - sent)
    row = _one_row(results)
    assert row["status"] == "interrupted" and row["error"].startswith("stopped by SIGTERM at step "), row
    step = int(row["total_steps"])
    assert row["error"] == f"stopped by SIGTERM at step {step}" and row["num_hosts"] == "2"
    with open(os.path.join(ckpt, "checkpoint")) as f:  # the checkpoint of the step the workers stopped at
        assert f'model_checkpoint_path: "ckpt-{step}"' in f.read()
    assert [line for _, line in driver.err if "SIGTERM" in line] == [
        "SIGTERM: stopping the workers after the current window (again to exit at once)"
    ], driver.text()
    _assert_gone(processes)
    _no_ray_noise(driver)


def test_a_lost_node_without_a_spare_fails_within_the_restart_timeout(cluster, shared, tmp_path):
    results, ckpt = tmp_path / "summary.csv", os.path.join(shared, "ckpt-lost")
    driver = Driver(
        cluster,
        shared,
        "--steps=100000",
        "--steps_per_loop=5",
        f"--checkpoint_dir={ckpt}",
        "--checkpoint_every_steps=20",
        "--max_failures=1",
        "--restart_timeout_s=20",
        f"--results={results}",
    )
    _wait_for_file(os.path.join(ckpt, "ckpt-20.index"), driver, timeout=400)
    killed = time.monotonic()
    cluster.kill_node(1)
    code = driver.wait(timeout=120)
    ended = time.monotonic()
    assert code == 1, driver.text()
    when, line = driver.wait_for(r"lost at step", timeout=1)
    assert re.fullmatch(
        r"node-b \(127\.0\.0\.4\) lost at step \d+; restarting from step \d+ once a node can take "
        r"its workers \(up to --restart_timeout_s=20 s\)",
        line,
    ), line
    assert (
        len([line for _, line in driver.out if line.startswith("node-b")]) == 1
    )  # one line for the event (and the row's error)
    row = _one_row(results)
    assert row["status"] == "failed", row
    assert re.match(
        r"node-b \(127\.0\.0\.4\) lost at step \d+; the workers could not be placed again within "
        r"--restart_timeout_s=20 s; last checkpoint: step \d+ in " + re.escape(ckpt),
        row["error"],
    ), row
    assert ended - killed < 20 + 60
    _record("node lost -> event line, s", when - killed)
    _record("node lost -> failed row and exit (restart timeout 20 s), s", ended - killed)
    _no_ray_noise(driver)


def test_a_lost_node_with_a_spare_resumes_from_the_checkpoint(cluster, shared, tmp_path):
    while sum(cluster.node_alive(i) for i in range(len(cluster.nodes))) < 3:  # the head and two more hosts
        cluster.add_node()
    results, ckpt, steps = tmp_path / "summary.csv", os.path.join(shared, "ckpt-spare"), 400
    driver = Driver(
        cluster,
        shared,
        f"--steps={steps}",
        "--steps_per_loop=5",
        f"--checkpoint_dir={ckpt}",
        "--checkpoint_every_steps=20",
        "--max_failures=1",
        "--restart_timeout_s=60",
        f"--results={results}",
    )
    _, started = driver.wait_for(r"^workers: 0 on", timeout=400)
    victim = next(i for i, n in enumerate(cluster.nodes) if not n["head"] and f"{n['hostname']} (" in started)
    name = f"{cluster.nodes[victim]['hostname']} ({cluster.nodes[victim]['ip']})"
    _wait_for_file(os.path.join(ckpt, "ckpt-20.index"), driver, timeout=300)
    killed = time.monotonic()
    cluster.kill_node(victim)
    when, line = driver.wait_for(r"lost at step", timeout=120)
    assert re.fullmatch(re.escape(name) + r" lost at step \d+; restarting from step (\d+)", line), line
    resumed_from = int(re.search(r"from step (\d+)", line).group(1))
    restarted_at, restarted = driver.wait_for(r"^restarted \(attempt 2\): workers ", timeout=200)
    assert name not in restarted
    code = driver.wait(timeout=400)
    assert code == 0, driver.text()
    row = _one_row(results)
    assert (row["status"], row["restarts"], row["total_steps"], row["num_hosts"]) == ("ok", "1", str(steps), "2"), row
    assert f"resumed from step {resumed_from} of {steps}" in driver.text()
    assert int(row["timed_steps"]) <= steps - resumed_from  # the lost attempt's windows are not in the row
    _record("node lost -> event line (spare), s", when - killed)
    _record("node lost -> workers restarted on the spare, s", restarted_at - killed)
    _no_ray_noise(driver)
