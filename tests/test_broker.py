"""The embedded broker: starts, refuses a taken port clearly, stops by PID."""

import socket

import pytest

from streams.broker import BrokerError, EmbeddedBroker, free_port


def test_broker_accepts_connections_and_stops(tmp_path):
    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log").start()
    pid = broker.process.pid
    socket.create_connection(("127.0.0.1", broker.port), timeout=2).close()
    proc = broker.process
    broker.stop()
    assert proc.poll() is not None, f"tansu pid {pid} still running"


def test_taken_port_is_a_clear_error(broker, tmp_path):
    with pytest.raises(BrokerError, match=f"port {broker.port} .* is taken"):
        EmbeddedBroker(broker.port, log_path=tmp_path / "second.log").start()
