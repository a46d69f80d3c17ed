"""The parent/side protocol of the benchmarks: each side (mindformers, transformers) runs in its own process
and answers the parent with lines ``@bench <json>`` on stdout (libraries may print other lines there)."""
import json
import os
import resource
import sys

REPLY = "@bench "


class SideFailed(RuntimeError):
    """A side process ended before answering."""


def reply(message) -> None:
    """Answer the parent (from a side)."""
    print(REPLY + json.dumps(message), flush=True)


def read_reply(proc, side):
    """The next message of a side; other lines it prints go to stderr."""
    for line in proc.stdout:
        if line.startswith(REPLY):
            return json.loads(line[len(REPLY):])
        sys.stderr.write(line)
    raise SideFailed(f"the {side} side ended with exit code {proc.wait()} before answering (see its error above)")


def side_env(threads: int, side: str, **extra) -> dict:
    """The environment of a side process that may use ``threads`` CPU threads (plus ``extra``). PyTorch's side
    gets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = threads. Ours gets them only when ``threads`` is fewer than
    the CPUs this process may use, and otherwise runs as a user's process does, without them (MindSpore then
    sets ``OMP_NUM_THREADS=1`` for itself; the host kernels take the CPU count from Python). With the variable
    set for every side, the benches once measured two-thread host kernels while users got one (2026-12-04).
    Paired on 2 cores, a LoRA step took the same with the variable unset or at 2 (1.88 vs 1.93 s)."""
    env = dict(os.environ, **extra)
    if side.startswith("transformers") or threads < len(os.sched_getaffinity(0)):
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    else:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    return env


def rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Highest resident set size of this process so far (or since :func:`reset_peak_rss`), in MB.

    WARNING: ru_maxrss survives exec, so a worker started by a large process (a pytest run holding models)
    reports its parent's size; /proc/self/status VmHWM belongs to this process image alone."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start :func:`peak_rss_mb` again from the current size (Linux: ``5`` to /proc/self/clear_refs); False
    where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def target(name: str, value: float, goal: float, at_most: bool = False) -> dict:
    """One of issue 14's targets as this run measured it: ``value >= goal`` (``<= goal`` when ``at_most``)."""
    return {"name": name, "value": value, "goal": goal, "at_most": at_most,
            "met": value <= goal if at_most else value >= goal}


def print_targets(found) -> None:
    """The targets a bench measured, a line each, met or NOT met."""
    if found:
        print("\ntargets (issue 14):")
    for t in found:
        print(f"  {t['name']:<46} {t['value']:6.3f} {'<=' if t['at_most'] else '>='} {t['goal']:.2f}: "
              f"{'met' if t['met'] else 'NOT met'}")
