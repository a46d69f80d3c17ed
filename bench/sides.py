"""The parent/side protocol of the benchmarks: each side (mindformers, transformers) runs in its own process
and answers the parent with lines ``@bench <json>`` on stdout (libraries may print other lines there)."""
import json
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
