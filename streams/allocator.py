"""Run the long-lived commands (worker, replay) on jemalloc when it is installed.

glibc's malloc keeps the heap it grew for the largest tensor shapes it has seen, and with
length-bucketed batches the shapes vary from batch to batch: a worker's RSS climbed in steps
(+8.5 % over 300 s at 30 events/s, `streams bench --duration 300`), while the same load on
jemalloc stayed flat and ran at least as fast. PyTorch CPU serving commonly does the same.
A preload must be in place before the process starts, so the command re-executes itself once
with LD_PRELOAD set. STREAMS_ALLOCATOR: auto (jemalloc when found), jemalloc (required),
system (glibc).

`python -m streams` re-executes first thing (`reexec_early`, from streams/__main__.py), before
the CLI and its settings are imported: a second interpreter start then costs ~0.03 s, where a
re-exec after the CLI's imports cost ~0.3 s of the worker's start-up (measured, issue 16)."""

from __future__ import annotations

import glob
import logging
import os
import sys

log = logging.getLogger("streams.allocator")

JEMALLOC_PATTERNS = ("/usr/lib/*-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2",
                     "/usr/local/lib/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2")
_REEXEC_MARK = "STREAMS_ALLOCATOR_REEXEC"
# The commands that run on jemalloc (cli.py calls ensure_allocator in each of them).
LONG_LIVED = ("worker", "replay", "bench")


class AllocatorError(RuntimeError):
    pass


def find_jemalloc() -> str | None:
    for pattern in JEMALLOC_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def jemalloc_loaded() -> bool:
    """Whether this process has jemalloc mapped (preloaded or linked)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libjemalloc" in line for line in maps)
    except OSError:
        return False


def ensure_allocator(choice: str, module: str = "streams") -> None:
    """Re-exec this command (`python -m <module> ...`, the same arguments) under jemalloc unless
    it already runs there (or `choice`, the settings' allocator, is system). Returns only when
    no re-exec was needed or possible."""
    if choice == "system" or jemalloc_loaded():
        return
    library = find_jemalloc()
    if library is None:
        if choice == "jemalloc":
            raise AllocatorError("STREAMS_ALLOCATOR=jemalloc but libjemalloc.so.2 is not installed "
                                 "(Debian/Ubuntu: apt-get install libjemalloc2)")
        log.warning("libjemalloc.so.2 not found: running on glibc malloc, whose RSS grows in steps "
                    "with new batch shapes (apt-get install libjemalloc2)")
        return
    if os.environ.get(_REEXEC_MARK):  # preloading did not take: do not loop
        log.warning("LD_PRELOAD=%s did not load jemalloc; running on glibc malloc", library)
        return
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)
    env = os.environ | {"LD_PRELOAD": preload, _REEXEC_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def reexec_early(argv: list[str]) -> None:
    """For a long-lived command, the same re-exec as `ensure_allocator`, before anything else
    is imported. Only the cheap cases act here; everything else (a missing jemalloc, a
    STREAMS_ALLOCATOR the settings will reject) is left to the command's own call, which says
    why in its log or error. STREAMS_ALLOCATOR is read here from the environment, the one
    setting read outside `Settings`: importing the settings (pydantic, ~0.15 s) would cost most of
    what re-executing this early saves; the command's own call reads it through `Settings`."""
    if len(argv) < 2 or argv[1] not in LONG_LIVED or os.environ.get(_REEXEC_MARK):
        return
    if os.environ.get("STREAMS_ALLOCATOR", "auto") in ("auto", "jemalloc") and find_jemalloc():
        ensure_allocator("auto")
