"""deploy/kubernetes.yaml, as far as this machine can check it (no cluster): it parses, the
workers' probes, ports and environment are the ones ``mitmflare run`` and the README name,
the Services reach the pods, and the writer and dashboard run once with a volume."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mitmflare.cli.run import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"


def objects() -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(c: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def default(variable: str) -> str:
    """The default the README's and `mitmflare run --help`'s environment list gives."""
    found = re.search(rf"{variable}\s+.*?\((\d+)\)", ENVIRONMENT)
    assert found, variable
    return found.group(1)


def test_the_workers_are_replicas_behind_a_service_ready_on_health():
    found = objects()
    workers = found[("Deployment", "mitmflare")]
    assert workers["spec"]["replicas"] >= 2
    c = container(workers)
    assert c["command"][:2] == ["mitmflare", "run"]
    assert "flare_require_access_keys=true" in c["command"]  # listening beyond loopback
    variables = env(c)
    assert variables["MITMFLARE_HOST"] == "0.0.0.0"
    assert variables["MITMFLARE_PORT"] == default("MITMFLARE_PORT")
    assert variables["MITMFLARE_WRITER"] == "off"
    assert variables["MITMFLARE_REDIS_URL"] == {"secretKeyRef": {"name": "mitmflare",
                                                                 "key": "redis-url"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["proxy"] == int(variables["MITMFLARE_PORT"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "proxy"}
    service = found[("Service", "mitmflare")]
    assert service["spec"]["selector"] == workers["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == "proxy"
    rolling = workers["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0  # a rolling restart keeps every replica serving


def test_one_writer_and_dashboard_with_a_volume_and_redis_reachable():
    found = objects()
    dash = found[("Deployment", "mitmflare-dashboard")]
    assert dash["spec"]["replicas"] == 1 and dash["spec"]["strategy"]["type"] == "Recreate"
    c = container(dash)
    variables = env(c)
    assert "MITMFLARE_WRITER" not in variables  # `mitmflare run` starts the writer here
    assert variables["MITMFLARE_DASHBOARD_PORT"] == default("MITMFLARE_DASHBOARD_PORT")
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["dashboard"] == \
        int(variables["MITMFLARE_DASHBOARD_PORT"])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert Path(str(variables["MITMFLARE_DB"])).parent == Path(mounts["data"])
    volumes = {v["name"]: v for v in dash["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in found
    assert found[("Service", "mitmflare-dashboard")]["spec"]["selector"] == \
        dash["spec"]["template"]["metadata"]["labels"]
    redis = found[("StatefulSet", "redis")]
    assert "noeviction" in container(redis)["args"]
    assert found[("Service", "redis")]["spec"]["ports"][0]["port"] == 6379
    for variable in {v for d in (found[("Deployment", "mitmflare")], dash)
                     for v in env(container(d))}:  # every one documented
        assert f"  {variable} " in ENVIRONMENT, variable


def test_the_readme_points_at_the_manifest():
    assert "deploy/kubernetes.yaml" in (ROOT / "README.md").read_text()
