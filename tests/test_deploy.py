"""Deploy files: Kubernetes manifests validated against the API's schemas (kubernetes-validate, strict), the KServe
InferenceService's containers as a Pod, probes that point at routes the service has, and the compose fleet."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(K8S.glob("*.yaml"))}


def served_paths() -> set[str]:
    from dnd.service.app import create_app

    return set(create_app().openapi()["paths"])


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml", "pvc.yaml"])
def test_manifest_is_valid_kubernetes(name: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifests()[name], "1.37.0", strict=True)  # raises on any schema violation


def test_inference_service_runs_the_image_on_the_open_inference_protocol() -> None:
    import kubernetes_validate

    isvc = manifests()["inferenceservice.yaml"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    pred = isvc["spec"]["predictor"]
    # kubernetes-validate has no schema for KServe's CRD: its predictor's containers and volumes form a Pod spec
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": pred["containers"], "volumes": pred["volumes"]},
    }
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    c = pred["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] in served_paths()
    assert {"/v2/models/{name}", "/v2/models/{name}/infer"} <= served_paths()


def test_probes_and_bundle_volume_of_the_deployment() -> None:
    dep = manifests()["deployment.yaml"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= served_paths()
    env = {e["name"]: e["value"] for e in c["env"]}
    mount = c["volumeMounts"][0]
    assert env["DND_MODEL_DIR"].startswith(mount["mountPath"]) and mount["readOnly"]
    hpa = manifests()["hpa.yaml"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]


def test_compose_fleet_and_dockerfile_arguments() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    det, lb = compose["services"]["detector"], compose["services"]["balancer"]
    assert (
        "/readyz" in " ".join(det["healthcheck"]["test"])
        and lb["depends_on"]["detector"]["condition"] == "service_healthy"
    )
    args = det["build"]["args"]
    assert {"BASE_IMAGE", "PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "TORCH_INDEX"} <= set(args)
    # package sources default to nothing: pip's own configuration decides unless the user sets one
    assert all(v == f"${{{k}:-}}" for k, v in args.items() if k != "BASE_IMAGE"), args
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    # nginx looks the replicas up again (a variable in proxy_pass + resolver) and retries POSTs on another one
    assert "set $detectors detector;" in conf and "proxy_pass http://$detectors:8000;" in conf
    assert "non_idempotent" in conf and "resolver 127.0.0.11" in conf
    assert lb["command"] == ["nginx", "-g", "daemon off;"]  # the same for nginx's images and deploy/base-image.sh's
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    # every package-source argument is declared without a default value
    assert {a for a in re.findall(r"^ARG (\w+)$", dockerfile, re.M)} >= {
        "PIP_INDEX_URL",
        "PIP_FIND_LINKS",
        "TORCH_INDEX",
    }


# A package index, wheel index or Debian archive named in a URL: the build uses pip's and apt's own configuration.
PACKAGE_HOST_URL = re.compile(r"https?://[^\s\"'<>)]*(simple|whl|debian|pypi)", re.I)


def test_no_tracked_file_names_a_package_host() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    hits = []
    for name in filter(None, (f.decode() for f in files)):
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # images, weights
        hits += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if PACKAGE_HOST_URL.search(line)]
    assert not hits, hits


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or Debian's docker-compose, as deploy/docker-test.sh picks; None without both."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_file_is_valid_for_compose() -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    r = subprocess.run([*compose, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_deploy_files_name_the_image_of_this_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    texts = [(ROOT / "docker-compose.yml").read_text(), *(p.read_text() for p in K8S.glob("*.yaml"))]
    tags = {t for text in texts for t in re.findall(r"dnd-detector:([\w.-]+)", text)}
    assert tags == {version}
