"""Process and machine measurements for the benchmark workers (standard library only).

Imported by `worker.py` both in the project venv and in the imagen-pytorch venv, so it
must not import numpy, keras, torch or anything else outside the standard library.

What a worker needs: per-step wall and process-CPU seconds (`Timer`), the thread count
and peak RSS of its process, the machine's identity and load, and a background
`LoadMonitor` that samples during the run how busy the machine was *without* this
process: `other_cores` = (busy CPU seconds of the whole machine from /proc/stat − this
process's CPU seconds) / wall seconds, and the hypervisor's steal time.
"""

import os
import platform
import resource
import statistics
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Environment variables that bound thread pools. Set by the driver before the worker
# starts (libraries read most of them at import time).
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
)


class Timer:
    """Wall (`perf_counter`) and process CPU (`process_time`: user + system) seconds."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def thread_count():
    """Threads of this process now (Linux /proc), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return dict(
        cpu_model=cpu_model(),
        nproc=os.cpu_count(),
        affinity=affinity,
        hostname=platform.node(),
        kernel=platform.release(),
        python=sys.version.split()[0],
    )


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _machine_cpu():
    """(busy seconds, steal seconds) of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class LoadMonitor:
    """Samples the machine's load in a background thread while a phase runs.

    Reports the 1-minute load average before, at the end and its maximum during, the
    number of cores other processes kept busy (`other_cores`, mean over the phase) and
    the steal time per wall second. The thread sleeps between samples: its own cost is
    negligible and it is counted in the thread count like any other.
    """

    def __init__(self, interval=1.0):
        self.interval = interval
        self._stop = threading.Event()
        self._max_load = None

    def __enter__(self):
        self.load_before = loadavg()
        self._max_load = self.load_before[0] if self.load_before else None
        self._max_threads = thread_count()
        self._w0, self._c0, self._m0 = time.perf_counter(), time.process_time(), _machine_cpu()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            load = loadavg()
            if load and (self._max_load is None or load[0] > self._max_load):
                self._max_load = load[0]
            n = thread_count()
            if n is not None and (self._max_threads is None or n > self._max_threads):
                self._max_threads = n

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        wall = time.perf_counter() - self._w0
        own = time.process_time() - self._c0
        m1 = _machine_cpu()
        self.load_after = loadavg()
        self.result = dict(
            loadavg_before=self.load_before,
            loadavg_after=self.load_after,
            loadavg1_max=self._max_load,
            max_threads=self._max_threads,
            wall_s=round(wall, 3),
            cpu_s=round(own, 3),
        )
        if self._m0 and m1 and wall > 0:
            busy = m1[0] - self._m0[0]
            self.result.update(
                other_cores=round(max(busy - own, 0.0) / wall, 3),
                steal_per_s=round((m1[1] - self._m0[1]) / wall, 3),
            )


def is_stable(walls, min_steps, window=3, tol=0.05):
    """True when at least `min_steps` (and 2 windows) are done and the median of the last
    `window` step times is within `tol` (relative) of the median of the `window` before."""
    if len(walls) < max(min_steps, 2 * window):
        return False
    last = statistics.median(walls[-window:])
    before = statistics.median(walls[-2 * window : -window])
    return abs(last - before) <= tol * before


def steady_steps(step, min_steps, max_steps, budget_s, window=3, tol=0.05):
    """Run `step()` until its time per step is stable (`is_stable`), at least `min_steps`
    are done and `budget_s` seconds are spent, or `max_steps` are done.

    Returns (walls, cpus, stop_reason). `step` must block until its work is finished.
    """
    walls, cpus = [], []
    t0 = time.perf_counter()
    reason = "max_steps"
    for _ in range(max_steps):
        with Timer() as t:
            step()
        walls.append(t.wall)
        cpus.append(t.cpu)
        if is_stable(walls, min_steps, window, tol):
            reason = "stable"
            break
        if len(walls) >= min_steps and time.perf_counter() - t0 >= budget_s:
            reason = "budget"
            break
    return walls, cpus, reason
