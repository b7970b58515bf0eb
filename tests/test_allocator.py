"""The worker's allocator choice (streams/allocator.py): jemalloc when installed, required on
request, glibc's on request. `make` installs Debian's libjemalloc2, so it is found here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streams import allocator


def test_jemalloc_is_found_where_make_installed_it():
    path = allocator.find_jemalloc()
    assert path is not None and path.endswith("libjemalloc.so.2")


def test_system_choice_never_re_executes(monkeypatch):
    monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail("re-executed"))
    allocator.ensure_allocator("system")


def test_required_jemalloc_that_is_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(allocator, "JEMALLOC_PATTERNS", ("/nonexistent/libjemalloc.so.2",))
    monkeypatch.setattr(allocator, "jemalloc_loaded", lambda: False)
    with pytest.raises(allocator.AllocatorError, match="apt-get install libjemalloc2"):
        allocator.ensure_allocator("jemalloc")
    monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail("re-executed"))
    allocator.ensure_allocator("auto")  # auto falls back to glibc, with a warning


def test_re_execution_preloads_jemalloc_once(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "jemalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    monkeypatch.setattr(allocator.sys, "argv", ["streams", "worker", "--loglevel", "info"])
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    monkeypatch.delenv(allocator._REEXEC_MARK, raising=False)
    allocator.ensure_allocator("auto")
    ((argv, env),) = calls
    assert argv[1:] == ["-m", "streams", "worker", "--loglevel", "info"]
    assert env["LD_PRELOAD"] == f"{allocator.find_jemalloc()} /opt/other.so"
    monkeypatch.setenv(allocator._REEXEC_MARK, "1")  # the re-executed process: no loop
    allocator.ensure_allocator("auto")
    assert len(calls) == 1


def test_a_process_under_the_preload_has_jemalloc_mapped():
    code = "from streams.allocator import jemalloc_loaded; print(jemalloc_loaded())"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    preloaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={"LD_PRELOAD": allocator.find_jemalloc(), "PATH": "/usr/bin:/bin"})
    assert (plain.stdout.strip(), preloaded.stdout.strip()) == ("False", "True")


def test_long_lived_commands_re_execute_before_the_cli_is_imported(monkeypatch):
    """`python -m streams worker` re-executes from __main__ before typer, rich and the settings
    are imported (a second start then costs ~0.03 s, not ~0.3 s); other commands, a
    STREAMS_ALLOCATOR of system, and the re-executed process itself do not."""
    calls = []
    monkeypatch.setattr(allocator, "jemalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator.os, "execve", lambda exe, argv, env: calls.append(argv))
    monkeypatch.delenv(allocator._REEXEC_MARK, raising=False)
    monkeypatch.delenv("STREAMS_ALLOCATOR", raising=False)
    for argv in (["streams", "tail"], ["streams"]):
        allocator.reexec_early(argv)
    monkeypatch.setenv("STREAMS_ALLOCATOR", "system")
    allocator.reexec_early(["streams", "worker"])
    assert calls == []
    monkeypatch.setenv("STREAMS_ALLOCATOR", "auto")
    monkeypatch.setattr(allocator.sys, "argv", ["streams", "worker"])
    allocator.reexec_early(["streams", "worker"])
    assert calls == [[sys.executable, "-m", "streams", "worker"]]
    monkeypatch.setenv(allocator._REEXEC_MARK, "1")
    allocator.reexec_early(["streams", "worker"])
    assert len(calls) == 1
    modules = subprocess.run([sys.executable, "-c", "import sys, streams.allocator; "
                              "print('typer' in sys.modules, 'pydantic' in sys.modules)"],
                             capture_output=True, text=True, check=True)
    assert modules.stdout.split() == ["False", "False"]  # what runs before the re-exec is light
