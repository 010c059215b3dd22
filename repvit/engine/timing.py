"""Timing primitives shared by the benchmark, ``optimize_for_inference`` and training:
interleaved rounds, robust summaries, the thread count, and the environment record."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence, Union

import torch


# --------------------------------------------------------------------------- environment
def environment(device: str = "cpu") -> dict:
    """Library versions and hardware, recorded with every benchmark."""
    from importlib import metadata
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "timm", "onnx", "onnxruntime", "numpy", "coremltools", "executorch", "openvino",
                 "nncf"):
        try:
            versions[name] = metadata.version(name)  # read without importing (some print on import)
        except metadata.PackageNotFoundError:
            continue
    env = {"device": device, "cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "torch_threads": torch.get_num_threads(), "versions": versions,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        env["gpu"] = torch.cuda.get_device_name(index)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- timing
def time_interleaved(candidates: dict[str, Callable[[], object]], *, warmup: int = 10, rounds: int = 10,
                     iters: int = 20, per_call: bool = True, sync: Callable[[], None] = lambda: None
                     ) -> dict[str, list[float]]:
    """Milliseconds per call for each candidate, measured in interleaved rounds.

    ``per_call=True`` times every call on its own (batch-1 latency). ``per_call=False``
    times ``iters`` calls back to back and records their mean (throughput, where a
    synchronisation per call would distort the figure); ``sync`` waits for the device.
    """
    if rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError("rounds and iters must be >= 1 and warmup >= 0")
    for run in candidates.values():
        for _ in range(warmup):
            run()
        sync()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run = candidates[name]
            if per_call:
                for _ in range(iters):
                    start = clock()
                    run()
                    sync()
                    samples[name].append((clock() - start) * 1e3)
            else:
                sync()
                start = clock()
                for _ in range(iters):
                    run()
                sync()
                samples[name].append((clock() - start) * 1e3 / iters)
    return samples


def summarize(samples: Sequence[float]) -> dict:
    ordered = sorted(samples)
    n = len(ordered)

    def pct(q: float) -> float:
        return ordered[min(n - 1, max(0, round(q * (n - 1))))]
    return {"samples": n, "median_ms": statistics.median(ordered), "p10_ms": pct(0.1), "p90_ms": pct(0.9),
            "min_ms": ordered[0]}


@contextlib.contextmanager
def torch_threads(threads: Optional[int]):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> Optional[tuple[int, int]]:
    """(idle, total) jiffies over all CPUs from /proc/stat, or None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def idle_cores(sample_seconds: float = 0.5) -> float:
    """How many cores are idle right now: sampled from /proc/stat, else cores minus the load average."""
    cores = os.cpu_count() or 1
    before = _cpu_times()
    if before is not None:
        time.sleep(sample_seconds)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            return cores * (after[0] - before[0]) / (after[1] - before[1])
    load = load_average()
    return max(0.0, cores - load) if load == load else float(cores)


def auto_threads(processes: int = 1, *, idle: Optional[float] = None) -> tuple[int, str]:
    """Compute threads per process for ``--threads auto``: the idle cores (at most the usable
    ones), shared by ``processes``, at least 1. An idle machine gets all its cores; on a busy
    one the threads stay within what is free, since OpenMP threads spinning against another
    job slow a step many times over. Returns ``(threads, why)``."""
    cores = usable_cores()
    idle = idle_cores() if idle is None else idle
    free = min(cores, int(idle + 0.5))
    threads = max(1, free // max(1, processes))
    shared = f", shared by {processes} processes" if processes > 1 else ""
    return threads, f"{threads} (auto: {idle:.1f} of {cores} cores idle{shared})"


def resolve_threads(value) -> tuple[Optional[int], str]:
    """A ``--threads`` value for a run: a count as given, ``auto`` measured now and shared by this node's
    torchrun processes (``LOCAL_WORLD_SIZE``), None for torch's choice. Returns ``(threads, why)``."""
    if value != "auto":
        return value, ""
    return auto_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def threads_option(value) -> Union[int, str]:
    """argparse/YAML type of ``--threads``: a count of 1 or more, or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"--threads takes a count of 1 or more or 'auto', got {value!r}")
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--threads takes a count of 1 or more or 'auto', got {value!r}") from None
    if count < 1:
        raise ValueError(f"--threads takes a count of 1 or more or 'auto', got {value!r}")
    return count


threads_option.describe = "a count of 1 or more, or auto"
