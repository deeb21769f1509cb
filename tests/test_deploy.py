"""The deployment files, checked against the code: they can't be run here (no Kubernetes, no AWS), so every
manifest is parsed and cross-checked: entry points and flags exist, images and versions agree, resources are
consistent, token auth is on and the dashboard is not exposed."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERAY = sorted((DEPLOY / "kuberay").glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for path in KUBERAY:
        for doc in _docs(path):
            if doc["kind"] == "RayCluster":
                out.append((path.name, doc["spec"]))
            elif doc["kind"] == "RayJob":
                out.append((path.name, doc["spec"]["rayClusterSpec"]))
    return out


def _containers(spec: dict):
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        for c in group["template"]["spec"]["containers"]:
            yield name, group, c


def _version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _cli_options(script: str) -> set[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_deploy_check_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = typer.main.get_command(module.app)
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_kinds_present():
    kinds = sorted(d["kind"] for p in KUBERAY for d in _docs(p))
    assert kinds == ["RayCluster", "RayJob", "RayJob"]
    assert not any(d["kind"] == "Ingress" for p in KUBERAY for d in _docs(p))


@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_cluster_spec(name, spec):
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"]["mode"] == "token", f"{name}: token authentication must be on"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: dashboard exposed"
    image = f"REGISTRY/fer-video:{_version()}-gpu"
    for group, g, c in _containers(spec):
        assert c["image"] == image, f"{name}/{group}: image {c['image']} != {image}"
        res = c["resources"]
        assert res["requests"] == res["limits"], f"{name}/{group}: requests != limits"
        params = g.get("rayStartParams", {})
        if "num-cpus" in params and group != "head":
            assert float(params["num-cpus"]) == float(res["limits"]["cpu"]), f"{name}/{group}: num-cpus != cpu limit"
        gpus = int(res["limits"].get("nvidia.com/gpu", 0))
        assert int(params.get("num-gpus", 0)) == gpus, f"{name}/{group}: num-gpus != nvidia.com/gpu"
        if gpus:
            assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))


def _rayjobs():
    return [(p.name, d) for p in KUBERAY for d in _docs(p) if d["kind"] == "RayJob"]


@pytest.mark.parametrize("name, job", _rayjobs(), ids=lambda x: x if isinstance(x, str) else "")
def test_rayjob_entrypoint_matches_code(name, job):
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), f"{name}: entry point {argv[1]} missing"
    options = _cli_options(argv[1])
    flags = [a for a in argv[2:] if a.startswith("--")]
    for flag in flags:
        assert flag in options, f"{name}: {argv[1]} has no option {flag}"
    cluster = spec["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    # Label selectors in the entry point match a worker group; the classifier's group has a GPU.
    for flag in ("--decode-label", "--classify-label"):
        if flag in argv:
            key, value = argv[argv.index(flag) + 1].split("=")
            match = [g for g in groups if g.get("labels", {}).get(key) == value]
            assert match, f"{name}: {flag} {key}={value} matches no worker group"
            if flag == "--classify-label":
                assert int(match[0]["rayStartParams"].get("num-gpus", 0)) >= 1
    # Inputs and outputs are bucket URIs, never the working dir.
    out = argv[argv.index("--out") + 1]
    assert re.match(r"^(s3|gs)://", out), f"{name}: --out must be a bucket URI"


def test_train_job_uses_gpus_and_shared_storage():
    (name, job), = [(n, j) for n, j in _rayjobs() if "train.py" in j["spec"]["entrypoint"]]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert "--use-gpu" in argv
    config = argv[argv.index("--config") + 1]
    from training.config import load_config

    cfg = load_config(REPO / config)
    workers = int(argv[argv.index("--num-workers") + 1])
    gpus = sum(int(g["rayStartParams"].get("num-gpus", 0)) * g["replicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert workers <= gpus, f"{name}: {workers} GPU workers but {gpus} GPUs"
    assert cfg.model in __import__("fer_core").list_models()
    assert argv[argv.index("--out") + 1].startswith("s3://")


def test_dockerfile_matches_code():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG BASE=rayproject/ray:2.60.0-py311-gpu" in text
    assert "ray-ml" not in text.replace("rayproject/ray-ml is discontinued", "")
    # The detector ships inside the package: the image downloads no model and points nothing elsewhere.
    assert "curl" not in text and "wget" not in text and "FER_YUNET_MODEL" not in text
    assert "create_detector()" in text
    for path in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", text, flags=re.M):
        assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    # The pinned requirements cover every runtime dependency of the package.
    lock = {re.split(r"[\[=]", line)[0].lower() for line in (DEPLOY / "requirements.lock").read_text().splitlines() if line and not line.startswith("#")}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[\[<>=;~ ]", dep)[0].lower()
        assert name in lock, f"{name} is not pinned in deploy/requirements.lock"


def test_aws_cluster_launcher():
    cfg = yaml.safe_load((DEPLOY / "aws" / "cluster.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    assert cfg["docker"]["image"] == f"REGISTRY/fer-video:{_version()}-gpu"
    assert "-e RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types["classify"]["resources"]["GPU"] >= 1 and types["classify"]["labels"] == {"node-role": "classify"}
    assert types["decode"]["labels"] == {"node-role": "decode"}
    assert sum(t.get("max_workers", 0) for t in types.values()) <= cfg["max_workers"]


# Security: token authentication stays on and no Ray port is reachable from outside the cluster.

RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard / job API, Ray client


def _pod_specs(spec: dict):
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        yield name, group["template"]["spec"]


def test_no_deploy_file_turns_token_auth_off():
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        for value in re.findall(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?(\w+)", text):
            assert value == "token", f"{path.relative_to(REPO)}: RAY_AUTH_MODE={value}"
    for name, spec in _cluster_specs():
        for group, _, container in _containers(spec):
            for env in container.get("env", []):
                if env["name"] == "RAY_AUTH_MODE":
                    assert env.get("value") == "token", f"{name}/{group}: RAY_AUTH_MODE={env.get('value')}"


@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_no_ray_port_exposed_outside_the_cluster(name, spec):
    """The head's dashboard-host 0.0.0.0 binds inside the pod only: reachable through the ClusterIP Service (and
    kubectl port-forward), never through a LoadBalancer, a NodePort, a host port or the host's network."""
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: head service type {head.get('serviceType')}"
    service = head.get("headService", {}).get("spec", {})
    assert service.get("type", "ClusterIP") == "ClusterIP", f"{name}: headService type {service.get('type')}"
    assert not service.get("externalIPs") and not service.get("loadBalancerIP"), f"{name}: headService exposed"
    for group, pod in _pod_specs(spec):
        assert not pod.get("hostNetwork"), f"{name}/{group}: hostNetwork puts the Ray ports on the node"
        for container in pod["containers"]:
            for port in container.get("ports", []):
                assert "hostPort" not in port, f"{name}/{group}: hostPort {port}"


def test_no_service_or_ingress_exposes_ray_ports():
    for path in KUBERAY:
        for doc in _docs(path):
            assert doc["kind"] not in ("Ingress", "Route", "Gateway", "HTTPRoute"), f"{path.name}: {doc['kind']}"
            if doc["kind"] == "Service":
                ports = {p.get("port") for p in doc["spec"].get("ports", [])} | {
                    p.get("targetPort") for p in doc["spec"].get("ports", [])}
                if ports & RAY_PORTS:
                    assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{path.name}: {doc['metadata']}"


def test_aws_cluster_opens_no_ray_port_to_the_internet():
    """The launcher's default security group lets in SSH only; nothing here publishes or opens a Ray port (the
    dashboard is reached through `ray dashboard`'s SSH tunnel)."""
    cfg = yaml.safe_load((DEPLOY / "aws" / "cluster.yaml").read_text())
    run_options = " ".join(cfg["docker"].get("run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)[\s=]", run_options), "docker publishes a port"
    commands = " ".join(cfg.get("head_start_ray_commands", []) + cfg.get("worker_start_ray_commands", []))
    assert "RAY_AUTH_MODE=disabled" not in commands
    for group in cfg.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        low, high = group.get("FromPort", 0), group.get("ToPort", 65535)
        opened = [r.get("CidrIp") for r in group.get("IpRanges", [])] + [r.get("CidrIpv6") for r in group.get("Ipv6Ranges", [])]
        if any(low <= port <= high for port in RAY_PORTS):
            assert not {"0.0.0.0/0", "::/0"} & set(opened), f"security group opens {low}-{high} to the internet"
