"""Run the Java programs of examples/java-consumer, as `make java-consumer` built them.

Missing tools or classes fail the test with what to do: these tests are never skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JAVA_SRC = REPO / "examples" / "java-consumer" / "src" / "main" / "java"
JAVA_CACHE = REPO / ".cache" / "java"
BUILT = JAVA_CACHE / "classes" / ".built"


def classpath() -> str:
    lib, classes = JAVA_CACHE / "lib", JAVA_CACHE / "classes"
    problems = []
    if shutil.which("java") is None:
        problems.append("no `java` on PATH")
    missing = [j for j in ("kafka-clients", "avro", "slf4j-api") if not (lib / f"{j}.jar").is_file()]
    if missing:
        problems.append(f"jars missing from {lib}: {', '.join(missing)}")
    if not BUILT.is_file():
        problems.append(f"the example is not compiled into {classes}")
    else:
        stale = [p.name for p in JAVA_SRC.rglob("*.java") if p.stat().st_mtime > BUILT.stat().st_mtime]
        if stale:
            problems.append(f"sources changed since the last build: {', '.join(stale)}")
    if problems:
        pytest.fail("Java consumer example not ready (" + "; ".join(problems) +
                    "): run `make java-consumer` (`make test` runs it first)", pytrace=False)
    return f"{classes}{os.pathsep}{lib / '*'}"


def run_java(main: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-cp", classpath(), f"io.streams.examples.{main}", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
