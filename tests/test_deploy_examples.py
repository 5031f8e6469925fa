"""The deployment examples in deploy/ say what production needs, checked by parsing them.

They cannot be run here (no container engine or cluster on this machine), so these tests hold them to
the properties that matter: two replicas sharing PostgreSQL and Redis behind a load balancer; probes on
/livez and /readyz; a read-only root filesystem with writable emptyDirs; non-root; resources; a migration
Job; keys from Secrets; a grace period longer than the drain; and only settings the service knows.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.config import ENV_PREFIX, Settings
from tests.support.constants import ROOT

DEPLOY = ROOT / "deploy"
KNOWN = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kubernetes() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in _documents(path):
            found[doc["kind"]] = doc
    return found


def _settings_named(text: str) -> set[str]:
    return set(re.findall(r"KETAMINE_CDS_[A-Z0-9_]+", text))


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_examples_name_only_real_settings(path: Path) -> None:
    """A misspelt variable would stop the service at start-up: the examples must not carry one."""
    assert _settings_named(path.read_text(encoding="utf-8")) <= KNOWN


# ------------------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = _documents(DEPLOY / "compose.yaml")
    return doc


def test_compose_runs_two_replicas_sharing_postgres_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = [name for name, svc in services.items() if "serve" in svc.get("command", [])]
    assert len(replicas) == 2
    assert {"postgres", "redis", "lb", "migrate"} <= set(services)
    for name in replicas:
        env = services[name]["environment"]
        assert env["KETAMINE_CDS_DATABASE_URL"].startswith("postgresql://")
        assert env["KETAMINE_CDS_DATABASE_URL"].split("@")[1].startswith("postgres:")
        assert env["KETAMINE_CDS_REDIS_URL"].startswith("redis://redis:")
        assert "KETAMINE_CDS_AUDIT_HASH_KEY" not in env, "the key comes from a secret, never inline"
        assert "audit_hash_key" in services[name]["secrets"]
        assert services[name]["read_only"] is True
        assert services[name]["user"].split(":")[0] != "0"
        assert any(str(mount).startswith("/tmp") for mount in services[name]["tmpfs"])
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["ketamine-cds", "migrate"]
    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    for name in replicas:
        assert re.search(rf"server\s+{name}:8080", nginx), f"the load balancer sends calls to {name}"


def test_compose_grace_period_covers_the_drain(compose: dict[str, Any]) -> None:
    for svc in compose["services"].values():
        if "serve" in svc.get("command", []):
            grace = int(str(svc["stop_grace_period"]).rstrip("s"))
            assert (
                grace > float(svc["environment"]["KETAMINE_CDS_DRAIN_S"]) + 10
            )  # + gunicorn's graceful stop


# ------------------------------------------------------------------------------------------ Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return _kubernetes()


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_deployment_probes_and_replicas(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    container = _container(deployment)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_is_read_only_and_non_root(k8s: dict[str, dict[str, Any]]) -> None:
    for kind in ("Deployment", "Job"):
        pod = k8s[kind]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        container = _container(k8s[kind])
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert {"cpu", "memory"} <= set(resources["limits"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        work_dir = _env(container).get("KETAMINE_CDS_WORK_DIR", "/tmp")
        assert "emptyDir" in volumes[mounts[work_dir]], "the work directory is a writable emptyDir"


def test_deployment_outbox_is_on_a_writable_volume(k8s: dict[str, dict[str, Any]]) -> None:
    container = _container(k8s["Deployment"])
    outbox = Path(_env(container)["KETAMINE_CDS_OUTBOX_DIR"])
    mounted = [Path(m["mountPath"]) for m in container["volumeMounts"]]
    assert any(outbox.is_relative_to(mount) for mount in mounted)


def test_deployment_grace_period_covers_the_drain(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    drain = float(_env(_container(deployment))["KETAMINE_CDS_DRAIN_S"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + 10


def test_keys_come_from_a_secret(k8s: dict[str, dict[str, Any]]) -> None:
    secret = k8s["Secret"]
    assert {"KETAMINE_CDS_AUDIT_HASH_KEY", "KETAMINE_CDS_DATABASE_URL"} <= set(secret["stringData"])
    for kind in ("Deployment", "Job"):
        container = _container(k8s[kind])
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
        assert not {"KETAMINE_CDS_AUDIT_HASH_KEY", "KETAMINE_CDS_DATABASE_URL"} & set(_env(container))


def test_migration_job_runs_migrate(k8s: dict[str, dict[str, Any]]) -> None:
    job = k8s["Job"]
    assert _container(job)["command"] == ["ketamine-cds", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert _container(job)["image"] == _container(k8s["Deployment"])["image"]


def test_service_selects_the_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert k8s["Service"]["spec"]["selector"].items() <= labels.items()
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
