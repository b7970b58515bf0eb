"""Render the chart with the Helm binary that `make helm-tool` fetches, and pick documents apart.

A missing helm or kubernetes-validate fails the test with what to run: these tests are never
skipped."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "streams-enricher"
CI_DIR = CHART / "ci"
HELM = REPO / ".cache" / "helm" / "bin" / "helm"
RELEASE = "enricher"
NAMESPACE = "streams"
KUBE_VERSION = "1.30.0"  # the oldest version the validation covers (Chart.yaml allows 1.25+)
SCENARIOS = ("minimal", "gpu-keda", "replay-job", "sasl", "llm", "observability", "candidate")

# Custom resources whose schemas kubernetes-validate does not ship (it knows built-in kinds
# only, and merely warns on others). They are left out of the schema validation on purpose
# and their shape is asserted in test_manifests.py instead. Anything else must validate.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def helm_bin() -> Path:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm not found at {HELM.relative_to(REPO)}: run `make helm-tool` "
                    "(make test does this) to fetch helm v3.17.2", pytrace=False)
    return HELM


def values_file(scenario: str) -> Path:
    return CI_DIR / f"values-{scenario}.yaml"


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HELM_CACHE_HOME": str(REPO / ".cache" / "helm" / "home"),
                               "HELM_CONFIG_HOME": str(REPO / ".cache" / "helm" / "home"),
                               "HELM_DATA_HOME": str(REPO / ".cache" / "helm" / "home")})


def _template_args(scenario: str | None, sets: tuple[str, ...]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    if scenario:
        args += ["-f", str(values_file(scenario))]
    for item in sets:
        args += ["--set", item]
    return args


@functools.lru_cache(maxsize=None)
def _render_cached(scenario: str | None, sets: tuple[str, ...]) -> str:
    proc = helm(*_template_args(scenario, sets))
    if proc.returncode != 0:
        pytest.fail(f"helm template ({scenario or 'defaults'}, {list(sets)}) failed:\n{proc.stderr}")
    return proc.stdout


def render_text(scenario: str | None = None, *sets: str) -> str:
    return _render_cached(scenario, tuple(sets))


def render(scenario: str | None = None, *sets: str) -> list[dict]:
    """The documents `helm template` prints (a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(render_text(scenario, *sets)) if d]


def render_error(scenario: str | None = None, *sets: str) -> str:
    """Rendering that must fail: returns helm's error output."""
    proc = helm(*_template_args(scenario, tuple(sets)))
    assert proc.returncode != 0, f"rendering with {list(sets)} should fail but printed:\n{proc.stdout[:2000]}"
    return proc.stderr


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in pod_spec.get('containers', [])]}")


def config(docs: list[dict]) -> dict[str, str]:
    """The worker's settings ConfigMap (the dashboard's ConfigMap, when on, is another)."""
    settings = [d for d in kinds(docs, "ConfigMap") if not d["metadata"]["name"].endswith("-dashboard")]
    assert len(settings) == 1, f"expected one settings ConfigMap, found {len(settings)}"
    return settings[0]["data"]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "Job")]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def is_crd(doc: dict) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_KINDS


def kubernetes_validate(files: list[Path]) -> subprocess.CompletedProcess:
    """`kubernetes-validate --strict -k 1.30.0 FILE...` from this interpreter's environment."""
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]' "
                    "(make setup does this)", pytrace=False)
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict",
                           "-k", KUBE_VERSION, *map(str, files)],
                          capture_output=True, text=True, timeout=300)
