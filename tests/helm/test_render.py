"""`helm lint` and `helm template` for every ci/values-*.yaml scenario, and the rendered output
validated offline against the Kubernetes 1.30 schemas with `kubernetes-validate --strict`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helm.chart import (CHART, CI_DIR, CRD_KINDS, KUBE_VERSION, SCENARIOS, helm, is_crd,
                              kubernetes_validate, render, values_file)


def test_every_scenario_is_checked():
    on_disk = sorted(p.name for p in CI_DIR.glob("values-*.yaml"))
    assert on_disk == sorted(f"values-{s}.yaml" for s in SCENARIOS)


@pytest.mark.parametrize("scenario", [None, *SCENARIOS], ids=["defaults", *SCENARIOS])
def test_helm_lint_strict(scenario):
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    if scenario:
        args += ["-f", str(values_file(scenario))]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[ERROR]" not in proc.stdout and "[WARNING]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_template_renders(scenario):
    docs = render(scenario)
    assert {"Deployment", "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget"} <= \
        {d["kind"] for d in docs}
    for doc in docs:
        assert doc["metadata"]["name"], doc
        assert doc["metadata"].get("namespace") == "streams", doc["kind"]


def _validate(docs_by_name: dict[str, list[dict]], tmp_path: Path) -> tuple[int, list[str]]:
    """Validate built-in kinds; return (exit code, problem lines). A WARN (e.g. a kind or
    apiVersion with no schema in 1.30) is a problem too: kubernetes-validate exits 0 on it."""
    files = []
    expected = 0
    for name, docs in docs_by_name.items():
        builtin = [d for d in docs if not is_crd(d)]
        expected += len(builtin)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
        files.append(path)
    proc = kubernetes_validate(files)
    lines = (proc.stdout + proc.stderr).splitlines()
    problems = [l for l in lines if not l.startswith("INFO ")]
    passed = [l for l in lines if l.startswith("INFO ") and " passed for resource " in l]
    if len(passed) != expected:
        problems.append(f"{len(passed)} documents passed, {expected} were given")
    return proc.returncode, problems


def test_kubernetes_validate_strict(tmp_path):
    rendered = {s: render(s) for s in SCENARIOS}
    rendered["defaults"] = render()
    # Only the CRDs listed in CRD_KINDS (tests/helm/chart.py) are left out: ScaledObject,
    # TriggerAuthentication and ServiceMonitor have no schema offline, and their shape is
    # asserted in test_manifests.py. Any other kind without a schema would WARN and fail here.
    skipped = {(d["apiVersion"], d["kind"]) for docs in rendered.values() for d in docs if is_crd(d)}
    assert skipped == CRD_KINDS, "every skipped CRD kind is rendered by some scenario"
    code, problems = _validate(rendered, tmp_path)
    assert code == 0 and not problems, "\n".join(problems)


def test_validation_is_not_vacuous(tmp_path):
    """The same check rejects an unknown field (strict) and an API version 1.30 does not serve."""
    deployment = next(d for d in render("minimal") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["gpuCount"] = 1
    code, problems = _validate({"unknown-field": [deployment]}, tmp_path)
    assert code != 0 and any("gpuCount" in p for p in problems), problems

    pdb = next(d for d in render("minimal") if d["kind"] == "PodDisruptionBudget")
    pdb["apiVersion"] = "policy/v1beta1"  # removed in 1.25
    code, problems = _validate({"removed-api": [pdb]}, tmp_path)
    assert any(p.startswith("WARN") for p in problems), problems
