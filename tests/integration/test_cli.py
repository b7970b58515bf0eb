"""The console script as a user runs it."""

import os
import subprocess
import sys

import pytest

from tests.fixtures.kafka_io import Scenario, WorkerProcess

COMMANDS = ["broker", "worker", "produce", "tail", "demo", "models", "eval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    out = subprocess.run([sys.executable, "-m", "streams", command, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Usage" in out.stdout


@pytest.mark.integration
def test_wrong_model_stops_worker_at_startup(broker, tiny_models, model_cache, tmp_path):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                        extra_env={"STREAMS_NER_MODEL": str(tiny_models["seqcls"])})
    worker = WorkerProcess(scenario).start()
    assert worker.proc.wait(120) == 2
    assert "not a token-classification model" in worker.log()
    missing = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path,
                       extra_env={"STREAMS_CLASSIFIER_MODEL": str(tmp_path / "nope")})
    worker = WorkerProcess(missing).start()
    assert worker.proc.wait(120) == 2
    assert "neither a built-in" in worker.log()


@pytest.mark.integration
def test_produce_and_tail_commands(broker, tiny_models, model_cache, tmp_path):
    scenario = Scenario(broker.bootstrap, tiny_models, model_cache, tmp_path)
    env = os.environ | scenario.env
    sent = subprocess.run([sys.executable, "-m", "streams", "produce", "--topic", scenario.input,
                           "--format", "avro", "--count", "30"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    assert "sent 30 events (avro)" in sent.stdout
    worker = WorkerProcess(scenario).start()
    try:
        tail = subprocess.run([sys.executable, "-m", "streams", "tail", "--topic", scenario.output,
                               "--count", "30", "--json", "--timeout", "120"], env=env,
                              capture_output=True, text=True, timeout=180)
    finally:
        worker.stop()
    lines = [l for l in tail.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 30, tail.stdout + tail.stderr
    assert '"classification"' in lines[0]
