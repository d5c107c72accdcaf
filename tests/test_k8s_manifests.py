"""Checks for the operations files: k8s/*.yaml manifests and cluster/*.yaml configs.

KubeRay documents (RayCluster, RayJob, RayService) are validated against the openAPIV3Schema of
the real KubeRay CRDs, vendored unmodified in ``k8s/crds/`` (KubeRay v1.7.0, Apache-2.0; see its
README). Kubernetes prunes or rejects unknown fields (``kubectl apply`` validates strictly by
default) while plain JSON Schema accepts them, so the CRD schemas are tightened here: an object
schema with ``properties`` and neither ``additionalProperties`` nor
``x-kubernetes-preserve-unknown-fields`` rejects unknown keys. That catches typos such as
``enableInTreeAutoscalling``. The ``x-kubernetes-*`` keys (including CEL
``x-kubernetes-validations``) are not evaluated; ``int32``/``int64`` formats are range-checked.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "k8s"
CLUSTER_DIR = REPO / "cluster"  # jobs/ (job configs) and launcher/ (`ray up` files)
CRD_DIR = K8S_DIR / "crds"  # vendored from ray-project/kuberay; not globbed as manifests (*.yaml is not recursive)

RAY_VERSION = "2.60.0"
S3_SECRET = "persona-ray-s3"
# Secrets the manifests may reference; persona-ray-hf (HF_TOKEN) is optional.
API_KEYS_SECRET = "persona-ray-api-keys"  # the serving app's bearer keys, mounted as a file
ALLOWED_SECRETS = {S3_SECRET, "persona-ray-hf", API_KEYS_SECRET}
CONFIG_MOUNT = "/home/ray/configs"
ENTRYPOINT_PREFIX = "python jobs/infer.py"

CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _k8s_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yml"))


def _load_documents() -> list[tuple[str, int, dict]]:
    docs = []
    for path in _k8s_files():
        with path.open() as fh:
            for i, doc in enumerate(yaml.safe_load_all(fh)):
                if doc is None:  # empty document (e.g. trailing ---)
                    continue
                docs.append((path.name, i, doc))
    return docs


DOCUMENTS = _load_documents()
KUBERAY_DOCS = [d for d in DOCUMENTS if isinstance(d[2], dict) and d[2].get("kind") in CRD_FILES]


def _docs_of_kind(kind: str) -> list[dict]:
    return [doc for _, _, doc in DOCUMENTS if doc.get("kind") == kind]


def _require_crds() -> None:
    missing = [f for f in CRD_FILES.values() if not (CRD_DIR / f).is_file()]
    assert not missing, f"vendored KubeRay CRDs missing from {CRD_DIR}: {', '.join(missing)} (see its README.md)"


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB each


@lru_cache(maxsize=None)
def _crd(kind: str) -> dict:
    with (CRD_DIR / CRD_FILES[kind]).open() as fh:
        return yaml.load(fh, Loader=_FAST_LOADER)


@lru_cache(maxsize=None)
def _schema(kind: str, api_version: str) -> dict:
    """openAPIV3Schema of the served CRD version matching ``api_version`` (e.g. ray.io/v1)."""
    crd = _crd(kind)
    group, _, version = api_version.rpartition("/")
    assert crd["spec"]["names"]["kind"] == kind
    assert group == crd["spec"]["group"], f"{kind} apiVersion group {group!r} != {crd['spec']['group']!r}"
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v.get("served"), f"{kind} {api_version} is not served by the CRD"
            return _strict(v["schema"]["openAPIV3Schema"])
    served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
    raise AssertionError(f"{kind}: no CRD version {version!r} (served: {served})")


def _strict(schema: dict) -> dict:
    """Copy of a structural CRD schema in which objects reject unknown fields, as the API server does."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


def _errors(doc: dict) -> list[str]:
    schema = _schema(doc["kind"], doc["apiVersion"])
    validator = jsonschema.Draft7Validator(schema, format_checker=_FORMATS)
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        out.append(f"{where}: {err.message[:300]}")
    return out


# --------------------------------------------------------------------------------------------
# Pod-template helpers
# --------------------------------------------------------------------------------------------


def _ray_cluster_specs(doc: dict) -> list[dict]:
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind == "RayCluster":
        return [spec]
    if kind == "RayJob":
        return [spec["rayClusterSpec"]] if "rayClusterSpec" in spec else []
    if kind == "RayService":
        return [spec["rayClusterConfig"]] if "rayClusterConfig" in spec else []
    return []


def _pod_templates(cluster_spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", cluster_spec["headGroupSpec"]["template"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield f"worker:{group['groupName']}", group["template"]


def _containers(template: dict) -> list[dict]:
    spec = template.get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def _all_ray_containers() -> list[tuple[str, str, dict, dict]]:
    out = []
    for fname, _, doc in KUBERAY_DOCS:
        for cs in _ray_cluster_specs(doc):
            for role, template in _pod_templates(cs):
                for c in template["spec"]["containers"]:
                    out.append((f"{fname}:{doc['metadata']['name']}:{role}:{c['name']}", role, c, template))
    return out


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}/{i}")


# --------------------------------------------------------------------------------------------
# Secret scanning
# --------------------------------------------------------------------------------------------

_SECRET_ENV_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|SESSION_KEY|API_KEY)", re.I)
_LITERAL_SECRET_KEY = re.compile(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{8,}")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b")
_SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def _secret_findings(text: str, docs: list[dict]) -> list[str]:
    """Literal credentials in a manifest's text or in its env entries."""
    found = []
    for rx in (_LITERAL_SECRET_KEY, _ACCESS_KEY_ID, _HF_TOKEN):
        found += [f"literal credential: {m.group(0)[:24]}..." for m in rx.finditer(text)]
    for m in _SECRET_LIKE.finditer(text):
        s = m.group(0)
        # An AWS secret access key: 40 chars of mixed case and digits (or / +).
        if re.search(r"[a-z]", s) and re.search(r"[A-Z]", s) and re.search(r"[0-9/+]", s):
            found.append(f"string that looks like an AWS secret key: {s[:6]}...")
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"Secret {doc.get('metadata', {}).get('name')} with inline data")
        for path, node in _walk(doc):
            if path.endswith("/env") and isinstance(node, list):
                for item in node:
                    if (
                        isinstance(item, dict)
                        and _SECRET_ENV_NAME.search(str(item.get("name", "")))
                        and "value" in item
                    ):
                        found.append(f"{path}: env {item['name']} has a literal value")
    return found


# ============================================================================================
# Tests: parsing and inventory
# ============================================================================================


def test_k8s_files_exist_and_parse():
    names = {p.name for p in _k8s_files()}
    assert {"raycluster.yaml", "rayjob-infer.yaml", "rayjob-pipeline.yaml", "rayservice.yaml"} <= names, names
    assert DOCUMENTS, "no YAML documents under k8s/"
    for fname, i, doc in DOCUMENTS:
        assert isinstance(doc, dict), f"{fname}[{i}] is not a mapping"
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{fname}[{i}] lacks {key}"
        assert doc["metadata"].get("name"), f"{fname}[{i}] lacks metadata.name"


def test_expected_kinds_present():
    by_file: dict[str, list[str]] = {}
    for fname, _, doc in DOCUMENTS:
        by_file.setdefault(fname, []).append(doc["kind"])
    assert by_file["raycluster.yaml"] == ["RayCluster"]
    assert sorted(by_file["rayjob-infer.yaml"]) == ["ConfigMap", "RayJob"]
    assert sorted(by_file["rayjob-pipeline.yaml"]) == ["PersistentVolumeClaim", "RayJob"]


# ============================================================================================
# Tests: CRD schema validation
# ============================================================================================


@pytest.mark.parametrize(
    "fname,index,doc",
    KUBERAY_DOCS,
    ids=[f"{f}[{i}]-{d['kind']}" for f, i, d in KUBERAY_DOCS],
)
def test_kuberay_document_matches_crd_schema(fname, index, doc):
    _require_crds()
    assert doc["apiVersion"] == "ray.io/v1", f"{fname}[{index}]: use ray.io/v1, not {doc['apiVersion']}"
    errors = _errors(doc)
    assert not errors, f"{fname}[{index}] {doc['kind']} fails the CRD schema:\n" + "\n".join(errors)


def _sample_cluster() -> dict:
    docs = [d for d in _docs_of_kind("RayCluster")]
    assert docs
    return copy.deepcopy(docs[0])


def test_validator_accepts_sample_and_rejects_bad_replicas():
    _require_crds()
    good = _sample_cluster()
    assert _errors(good) == []
    bad = copy.deepcopy(good)
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = "many"
    errors = _errors(bad)
    assert any("workerGroupSpecs/0/replicas" in e for e in errors), errors


def test_validator_rejects_missing_required_field():
    _require_crds()
    bad = _sample_cluster()
    del bad["spec"]["headGroupSpec"]
    assert any("headGroupSpec" in e and "required" in e for e in _errors(bad)), _errors(bad)

    bad = _sample_cluster()
    del bad["spec"]["workerGroupSpecs"][0]["groupName"]
    assert any("groupName" in e for e in _errors(bad))


def test_validator_rejects_common_mistakes():
    _require_crds()
    # rayStartParams is map[string]string: an unquoted 0 is rejected by the API server.
    bad = _sample_cluster()
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("rayStartParams/num-cpus" in e for e in _errors(bad))
    # Unknown (misspelt) fields are rejected, as `kubectl apply` does with strict validation.
    bad = _sample_cluster()
    bad["spec"]["enableInTreeAutoscalling"] = True
    assert any("enableInTreeAutoscalling" in e for e in _errors(bad))
    # int32 range.
    bad = _sample_cluster()
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2**40
    assert any("maxReplicas" in e for e in _errors(bad))
    # A broken RayJob as well.
    jobs = _docs_of_kind("RayJob")
    assert jobs
    bad_job = copy.deepcopy(jobs[0])
    bad_job["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert any("shutdownAfterJobFinishes" in e for e in _errors(bad_job))


def test_crd_version_lookup_uses_served_version():
    _require_crds()
    with pytest.raises(AssertionError):
        _schema("RayCluster", "ray.io/v9")
    with pytest.raises(AssertionError):
        _schema("RayCluster", "example.com/v1")


# ============================================================================================
# Tests: content rules
# ============================================================================================


def test_ray_version_everywhere():
    specs = [cs for _, _, d in KUBERAY_DOCS for cs in _ray_cluster_specs(d)]
    assert specs, "no Ray cluster specs found"
    for cs in specs:
        assert cs.get("rayVersion") == RAY_VERSION, cs.get("rayVersion")


def test_images_are_ray_2_60_based():
    for where, _, c, _ in _all_ray_containers():
        image = c["image"]
        assert image == "persona-ray:latest" or image.startswith(f"rayproject/ray:{RAY_VERSION}"), (where, image)


def test_every_container_gets_s3_secret_via_envfrom():
    containers = _all_ray_containers()
    assert containers
    for where, _, c, _ in containers:
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        assert S3_SECRET in refs, f"{where}: envFrom lacks secretRef {S3_SECRET}"
        s3_ref = next(e["secretRef"] for e in c["envFrom"] if e.get("secretRef", {}).get("name") == S3_SECRET)
        assert not s3_ref.get("optional", False), f"{where}: {S3_SECRET} must not be optional"


def test_only_known_secrets_are_referenced():
    for fname, _, doc in DOCUMENTS:
        for path, node in _walk(doc):
            if path.endswith("/secretRef") or path.endswith("/secretKeyRef"):
                assert node.get("name") in ALLOWED_SECRETS, f"{fname}{path}: unknown secret {node.get('name')}"
            if path.endswith("/env") and isinstance(node, list):
                for item in node:
                    if item.get("name", "").startswith("AWS_"):
                        ref = item.get("valueFrom", {}).get("secretKeyRef", {})
                        assert ref.get("name") == S3_SECRET, f"{fname}{path}: {item['name']} must come from {S3_SECRET}"


@pytest.mark.parametrize(
    "path",
    sorted(K8S_DIR.glob("*.y*ml")) + sorted(CLUSTER_DIR.glob("*/*.y*ml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_no_literal_credentials(path):
    text = path.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert _secret_findings(text, docs) == []


def test_secret_scanner_catches_literals():
    fake_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS documentation example
    text = f"env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: {fake_secret}\n"
    assert _secret_findings(text, [yaml.safe_load(text)])
    assert _secret_findings("AWS_SECRET_ACCESS_KEY: abcdefgh12345678", [])
    assert _secret_findings("key: AKIAIOSFODNN7EXAMPLE", [])
    doc = {"env": [{"name": "HF_TOKEN", "value": "x"}]}
    assert _secret_findings("", [doc])
    assert _secret_findings("", [{"kind": "Secret", "stringData": {"a": "b"}}])


def test_no_memory_monitor_override():
    for fname, _, doc in DOCUMENTS:
        assert "RAY_memory_monitor_refresh_ms" not in json.dumps(doc), fname


def test_raycluster_shape():
    clusters = _docs_of_kind("RayCluster")
    jobs = _docs_of_kind("RayJob")
    specs = [c["spec"] for c in clusters] + [j["spec"]["rayClusterSpec"] for j in jobs]
    assert specs
    for cs in specs:
        assert cs.get("enableInTreeAutoscaling") is True
        head = cs["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", "head must advertise 0 CPUs"
        assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
        head_c = head["template"]["spec"]["containers"][0]
        assert any(p.get("containerPort") == 8265 for p in head_c.get("ports", [])), "dashboard port"
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in head_c["resources"].get(section, {}), "head must not take a GPU"
        gpu_groups = [
            g for g in cs["workerGroupSpecs"]
            if str(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")) == "1"
        ]
        assert gpu_groups, "need a worker group with nvidia.com/gpu: 1"
        for g in gpu_groups:
            assert g["minReplicas"] == 0 and g["maxReplicas"] == 8
            assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        for role, template in _pod_templates(cs):
            for c in template["spec"]["containers"]:
                res = c.get("resources", {})
                assert res.get("requests") and res.get("limits"), f"{role}/{c['name']}: set requests and limits"
                for key in ("cpu", "memory"):
                    assert key in res["requests"] and key in res["limits"], f"{role}/{c['name']}: {key}"


def test_configmap_infer_config():
    cms = [d for d in _docs_of_kind("ConfigMap") if "infer.yaml" in d.get("data", {})]
    assert len(cms) == 1
    from persona_ray.inference.infer import InferConfig

    cfg = yaml.safe_load(cms[0]["data"]["infer.yaml"])
    assert isinstance(cfg, dict)
    infer = InferConfig.model_validate(cfg)  # the job's own validation, as on the cluster
    assert infer.pairs.input and infer.output and infer.engine.model
    assert infer.engine.backend in {"vllm", "openai"}
    assert infer.engine.vllm.gpu is True


def _job(name: str) -> dict:
    return next(j for j in _docs_of_kind("RayJob") if j["metadata"]["name"] == name)


def test_every_rayjob_cleans_up_retries_and_names_a_script_that_exists():
    jobs = _docs_of_kind("RayJob")
    assert {j["metadata"]["name"] for j in jobs} == {"persona-infer", "persona-pipeline"}
    for job in jobs:
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0
        assert spec["submissionMode"] == "K8sJobMode"
        assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 1
        # `python <script>` runs in the image's copy of this repository (workingDir /home/ray/app).
        words = spec["entrypoint"].split()
        assert words[0] == "python" and (REPO / words[1]).is_file(), spec["entrypoint"]
        for role, template in _pod_templates(spec["rayClusterSpec"]):
            assert template["spec"]["containers"][0]["workingDir"] == "/home/ray/app", role


def test_rayjob_infer_reads_its_config_from_the_configmap():
    spec = _job("persona-infer")["spec"]
    assert spec["entrypoint"].startswith(ENTRYPOINT_PREFIX), spec["entrypoint"]
    # The --config path is a key of the ConfigMap mounted at CONFIG_MOUNT on head and workers.
    m = re.search(r"--config\s+(\S+)", spec["entrypoint"])
    assert m, "entrypoint needs --config"
    config_path = Path(m.group(1))
    assert str(config_path.parent) == CONFIG_MOUNT
    cms = {d["metadata"]["name"]: d for d in _docs_of_kind("ConfigMap")}
    for role, template in _pod_templates(spec["rayClusterSpec"]):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        c = template["spec"]["containers"][0]
        mounts = [vm for vm in c.get("volumeMounts", []) if vm["mountPath"] == CONFIG_MOUNT]
        assert mounts, f"{role}: no volumeMount at {CONFIG_MOUNT}"
        vol = volumes[mounts[0]["name"]]
        cm_name = vol["configMap"]["name"]
        assert cm_name in cms, f"{role}: ConfigMap {cm_name} not defined in k8s/"
        assert config_path.name in cms[cm_name]["data"], f"{config_path.name} not in ConfigMap {cm_name}"


def test_rayjob_pipeline_runs_a_valid_preset_onto_a_volume_every_pod_shares():
    from persona_ray.pipeline.run import PipelineConfig

    spec = _job("persona-pipeline")["spec"]
    flags = dict(re.findall(r"--(config|input|output)\s+(\S+)", spec["entrypoint"]))
    assert set(flags) == {"config", "input", "output"}, spec["entrypoint"]
    preset = yaml.safe_load((REPO / flags["config"]).read_text())
    preset["pairs"]["input"], preset["output"] = flags["input"], flags["output"]
    cfg = PipelineConfig.model_validate(preset)  # the job's own validation, as on the cluster
    assert cfg.pairs.input.startswith("s3://")

    claims = {d["metadata"]["name"]: d for d in _docs_of_kind("PersistentVolumeClaim")}
    mount_paths = set()
    for role, template in _pod_templates(spec["rayClusterSpec"]):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        shared = [vm for vm in template["spec"]["containers"][0].get("volumeMounts", [])
                  if "persistentVolumeClaim" in volumes.get(vm["name"], {})]
        assert len(shared) == 1, f"{role}: mount the run volume once"
        claim = volumes[shared[0]["name"]]["persistentVolumeClaim"]["claimName"]
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], claim
        mount_paths.add(shared[0]["mountPath"])
    assert len(mount_paths) == 1 and cfg.output.startswith(mount_paths.pop() + "/"), cfg.output

    # Workers scale from zero, and some group fits each engine's tensor-parallel size.
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert all(g["minReplicas"] == 0 for g in groups)
    gpus = {int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) for g in groups}
    assert cfg.engine.vllm.tensor_parallel_size in gpus and 1 in gpus


# ============================================================================================
# Tests: cluster/*.yaml
# ============================================================================================

CLUSTER_FILES = sorted(CLUSTER_DIR.glob("*/*.y*ml"))


def test_cluster_files_exist():
    names = {f"{p.parent.name}/{p.name}" for p in CLUSTER_FILES}
    assert {"jobs/local.yaml", "launcher/aws-gpu.yaml", "jobs/infer-gpu.yaml"} <= names, names


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cluster_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1 and isinstance(docs[0], dict), path


def test_local_config_values():
    cfg = yaml.safe_load((CLUSTER_DIR / "jobs" / "local.yaml").read_text())
    engine = cfg["engine"]
    assert cfg["pairs"]["input"] == "persona_ray/data/sample_pairs.jsonl"
    assert cfg["output"] == "outputs/demo"
    assert engine["model"] == "tiny"
    assert engine["backend"] == "vllm"
    assert engine["guided_decoding"] is True
    assert engine["vllm"]["gpu"] is False
    assert engine["vllm"]["concurrency"] == 1
    assert engine["vllm"]["max_model_len"] == 4096
    assert engine["sampling"]["temperature"] == 0.0
    # every token is at least one character: the budget must cover the longest guided persona
    longest = len("The user is ") + cfg["max_attribute_chars"] + len(" and prefers ") + cfg["max_preference_chars"] + 1
    assert engine["sampling"]["max_tokens"] >= longest


def test_infer_gpu_config_matches_configmap_shape():
    cfg = yaml.safe_load((CLUSTER_DIR / "jobs" / "infer-gpu.yaml").read_text())
    cm = next(d for d in _docs_of_kind("ConfigMap") if "infer.yaml" in d.get("data", {}))
    cm_cfg = yaml.safe_load(cm["data"]["infer.yaml"])
    assert set(cfg) == set(cm_cfg)
    assert set(cfg["engine"]) == set(cm_cfg["engine"])
    assert set(cfg["engine"]["vllm"]) == set(cm_cfg["engine"]["vllm"])
    assert cfg["engine"]["vllm"]["gpu"] is True and cfg["engine"]["backend"] == "vllm"
    assert cfg["pairs"]["input"] and cfg["output"] and cfg["engine"]["model"]


def test_aws_cluster_launcher_config():
    cfg = yaml.safe_load((CLUSTER_DIR / "launcher" / "aws-gpu.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    assert cfg["docker"]["image"] == "persona-ray:latest"
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge"
    assert head["resources"].get("CPU") == 0
    gpu = [n for k, n in nodes.items() if k != cfg["head_node_type"]]
    assert len(gpu) == 1
    assert gpu[0]["node_config"]["InstanceType"] == "g5.2xlarge"
    assert gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] == 8
    assert cfg["max_workers"] >= gpu[0]["max_workers"]


def test_aws_cluster_launcher_config_matches_ray_schema():
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray not installed; cannot check cluster/launcher/aws-gpu.yaml against ray-schema.json")
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} not found")
    schema = json.loads(schema_path.read_text())
    cfg = yaml.safe_load((CLUSTER_DIR / "launcher" / "aws-gpu.yaml").read_text())
    jsonschema.validate(cfg, schema)


def test_rayservice_serve_config_builds_a_valid_app_config():
    from persona_ray.serving.app import ServeConfig, build_app

    services = _docs_of_kind("RayService")
    assert len(services) == 1
    serve_config = yaml.safe_load(services[0]["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert module == "persona_ray.serving.app" and attr == "build_app" and callable(build_app)
    cfg = ServeConfig(**app["args"])  # the same validation the builder applies at deploy time
    assert cfg.engine.vllm.gpu and cfg.llm_gpus == 1 and cfg.index.startswith("s3://")
    groups = {g["groupName"]: g for g in services[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] >= cfg.llm_gpus
    # one engine per model folder, each up to max_replicas GPUs
    assert len(cfg.engines()) * cfg.llm_scaling.max_replicas <= groups["gpu"]["maxReplicas"]
    assert {m.name for m in cfg.served_models()} >= {"PT-DPO", "DPO"} and cfg.auth == "api_key"
    # The key file the ingress reads is the Secret, mounted on every pod an ingress replica may land on.
    key_dir = str(Path(cfg.api_keys_file).parent)
    pods = [services[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in groups.values()]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == key_dir]
        assert volumes[mount["name"]]["secret"]["secretName"] == API_KEYS_SECRET and mount["readOnly"]
