"""Stop every rank of a multi-process run when one of them dies, instead of leaving the others blocked in their
next collective, and say which rank it was.

What MindSpore's msrun does by itself (measured with MindSpore 2.10 on CPU: two data-parallel workers, one
SIGKILLed mid-run):

- with ``--join=True`` (as scripts/msrun_launcher.sh runs it) msrun polls its workers every second; when one
  exits with a non-zero code it logs ``Worker process <pid> exit with exception. Error code: -9``, SIGKILLs
  the other workers' process groups, waits until its scheduler times their nodes out (``MS_NODE_TIMEOUT``,
  30 s by default) and exits with 1. The dead worker is named by its pid only, and the scheduler's log then
  blames the node msrun killed ("worker 0 is the first one timed out");
- without ``--join`` (msrun's default) msrun has already returned 0: the survivor blocks in its AllReduce
  until MindSpore's heartbeat gives up (~70 s: the scheduler times the dead node out, then the survivor fails
  to reconnect and sends itself SIGTERM), and no log names the dead rank.

The watchdog: while a rank trains it holds an exclusive ``flock`` on ``<directory>/rank-<r>.lock`` (which
holds its pid); the kernel drops the lock the moment the process ends, however it ends (SIGKILL included).
A rank that leaves training writes why into ``rank-<r>.state`` first: ``finished``, ``failed: <error>``, or
(written by its monitor) ``stopped by the watchdog: <the cause>``. A monitor process per rank waits on every
rank's lock, one thread each, so it learns within milliseconds which rank ended first. It is this file run as
a script (standard library only: it starts in milliseconds) in its own session, so a launcher that kills the
rank's process group does not silence it. When another rank ends without finishing, the monitor writes to
its rank's stderr (msrun's worker log)::

    [mindformers watchdog] rank 1 (pid 4242) died: its process ended during training (killed or crashed);
    stopping rank 0 (pid 4241), which would otherwise wait for it forever in its next collective

and ends its rank (SIGTERM, then SIGKILL after 5 s), whose exit code is then non-zero (-15): msrun with
``--join=True`` exits with 1. The dead rank's own monitor writes ``rank 1 (pid 4242) ended during training
without finishing`` into that rank's log.

The directory must be shared by the ranks (the Trainer uses ``<output_dir>/.watchdog``). A rank whose lock
never appears there (another host without a shared output_dir) is not watched: it is never wrongly stopped,
and its death is left to msrun and MindSpore's heartbeat.
"""
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, NamedTuple, Optional

try:
    import fcntl
except ImportError:  # not POSIX: no watchdog
    fcntl = None

WATCHDOG_DIR = ".watchdog"
POLL_SECONDS = 0.1  # how often a lock that is not held yet is looked at
SETTLE_SECONDS = 0.2  # after a rank ends, how long to wait for others ending at about the same time
KILL_GRACE_SECONDS = 5.0
FINISHED = "finished"
STOPPED = "stopped by the watchdog"
PREFIX = "[mindformers watchdog]"


def _paths(directory: str, rank: int) -> tuple:
    return os.path.join(directory, f"rank-{rank}.lock"), os.path.join(directory, f"rank-{rank}.state")


def _held(path: str) -> bool:
    """Whether a live process holds the lock on ``path`` (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the shared lock taken if it was free
    return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {PREFIX} {message}\n")
        sys.stderr.flush()
    except OSError:  # the rank's log is gone: nothing else to tell
        pass


class RankWatchdog:
    """One rank's side of the watchdog: its lock and state files, and its monitor process.

    Args:
        directory: a directory every rank of the run can reach (created if missing).
        rank: this process's rank.
        world_size: the number of ranks.
    """

    def __init__(self, directory: str, rank: int, world_size: int):
        if fcntl is None:
            raise RuntimeError("the rank watchdog needs fcntl.flock (a POSIX system)")
        self.directory, self.rank, self.world_size = directory, rank, world_size
        self._lock_path, self._state_path = _paths(directory, rank)
        self._fd: Optional[int] = None
        self._monitor: Optional[subprocess.Popen] = None

    def start(self) -> None:
        """Take this rank's lock and start its monitor."""
        os.makedirs(self.directory, exist_ok=True)
        self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        # under the lock: a monitor that saw an earlier run of this rank end reads its note while holding the
        # lock shared, so the note cannot go before that monitor has read it
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._state_path)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        self._monitor = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), self.directory, str(self.rank), str(self.world_size),
             str(os.getpid())], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
        self._monitor.stdout.readline()  # "watching": from here on an end of any rank is seen
        self._monitor.stdout.close()

    def stop(self, error: Optional[str] = None) -> None:
        """Leave training: ``finished``, or ``failed: <error>`` (the other ranks are then stopped, as they
        would wait for this one forever); release the lock; the monitor exits."""
        if self._fd is None:
            return
        _write(self._state_path, FINISHED if error is None else f"failed: {error}")
        os.close(self._fd)  # after the note: whoever sees the lock free reads why
        self._fd = None
        try:
            self._monitor.wait(timeout=SETTLE_SECONDS + 2)
        except subprocess.TimeoutExpired:
            self._monitor.kill()
            self._monitor.wait()


@contextlib.contextmanager
def watch_ranks(directory: str, rank: int, world_size: int) -> Iterator[Optional[RankWatchdog]]:
    """Run the block with this rank watched (and watching the others); nothing for a single process or
    where ``flock`` does not exist. An exception leaving the block is reported to the other ranks.

    Args:
        directory: shared by the ranks; the Trainer passes ``<output_dir>/.watchdog``.
        rank, world_size: this process's rank and the number of ranks.
    """
    if world_size <= 1 or fcntl is None:
        yield None
        return
    watchdog = RankWatchdog(directory, rank, world_size)
    watchdog.start()
    try:
        yield watchdog
    except BaseException as error:
        watchdog.stop(error=f"{type(error).__name__}: {error}")
        raise
    watchdog.stop()


# ---------------------------------------------------------------------------------------------------------
# the monitor process


class _End(NamedTuple):
    """A rank releasing its lock: when (time.monotonic()), which rank and pid, and its note."""

    at: float
    rank: int
    pid: str
    note: str


def _wait_for_ends(directory: str, rank: int, ends: queue.Queue) -> None:
    """Put an :class:`_End` into ``ends`` each time ``rank`` releases its lock (a thread per rank)."""
    lock, state = _paths(directory, rank)
    while True:
        while not _held(lock):  # not started yet, between two runs, or an earlier run's file
            time.sleep(POLL_SECONDS)
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # returns when the holder releases it: left training, or died
            ends.put(_End(time.monotonic(), rank, _read(lock) or "?", _read(state)))
        finally:
            os.close(fd)


def _describe(end: _End) -> str:
    if end.note.startswith(("failed", STOPPED)):
        return f"rank {end.rank} (pid {end.pid}) {end.note}"
    return f"rank {end.rank} (pid {end.pid}) died: its process ended during training (killed or crashed)"


def _end_process(parent: int, own_lock: str) -> None:
    """End the rank ``parent``: SIGTERM, then SIGKILL if it still holds its lock after the grace period."""
    if os.getppid() != parent:  # it has ended already (this process was re-parented): its pid may be reused
        return
    os.kill(parent, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < deadline:
        if not _held(own_lock):
            return
        time.sleep(POLL_SECONDS)
    if os.getppid() == parent:
        os.kill(parent, signal.SIGKILL)


def monitor(directory: str, rank: int, world_size: int, parent: int) -> int:
    """The monitor of ``rank`` (process ``parent``): returns 1 after stopping it because another rank ended
    without finishing, 0 when it left training itself (finished, failed, or died)."""
    ends: queue.Queue = queue.Queue()
    for watched in range(world_size):
        threading.Thread(target=_wait_for_ends, args=(directory, watched, ends), daemon=True).start()
    print("watching", flush=True)  # to start(), which waits for it; messages go to stderr
    sys.stdout.close()
    while True:
        first = ends.get()
        if first.rank == rank and first.note:  # finished or failed: the rank says so itself
            return 0
        if first.note == FINISHED:
            continue
        seen = [first]  # ranks ending at about the same time (msrun kills the others within a second)
        deadline = time.monotonic() + SETTLE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(ends.get(timeout=left))
            except queue.Empty:
                break
        own = next((end for end in seen if end.rank == rank), None)
        if own is not None and own.note:  # finished or failed: the rank says so itself
            return 0
        # a rank its watchdog stopped is not the cause; of the others, the first to end is
        causes = sorted(end for end in seen
                        if end.rank != rank and end.note != FINISHED and not end.note.startswith(STOPPED))
        if own is not None:
            if causes and causes[0].at < own.at:
                _say(f"{_describe(causes[0])}; this rank, {rank} (pid {parent}), ended "
                     f"{own.at - causes[0].at:.2f} s later")
            else:
                _say(f"rank {rank} (pid {parent}) ended during training without finishing (killed or crashed)")
            return 0
        stopped = [end for end in seen if end.rank != rank and end.note.startswith(STOPPED)]
        cause = causes[0] if causes else (stopped[0] if stopped else None)
        if cause is None:
            continue
        _write(_paths(directory, rank)[1], f"{STOPPED}: {_describe(cause)}")
        _say(f"{_describe(cause)}; stopping rank {rank} (pid {parent}), which would otherwise wait for it "
             "forever in its next collective")
        _end_process(parent, _paths(directory, rank)[0])
        return 1


if __name__ == "__main__":
    sys.exit(monitor(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
