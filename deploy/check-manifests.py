#!/usr/bin/env python3
"""Validates deploy/kubernetes/ offline, strictly, and checks that its pieces fit together.

    python deploy/check-manifests.py [--worker-help BINARY]

Needs `kubernetes-validate`, `jsonschema` and `PyYAML` (scripts/test-deploy.sh installs them in a
venv of the build directory).

- Core kinds: `kubernetes-validate` with its strict schemas (unknown fields are errors), for the
  newest Kubernetes version it bundles.
- Custom resources: the `openAPIV3Schema` of their CustomResourceDefinition, vendored under
  deploy/kubernetes/schemas/ (KEDA's ScaledObject), made strict the way the API server prunes:
  an object schema without `x-kubernetes-preserve-unknown-fields` admits only its properties.
  Their `metadata` is checked against Kubernetes' ObjectMeta. The CEL rules of a CRD
  (`x-kubernetes-validations`) are implemented here one by one; a rule this file does not know
  fails the check.
- A kind that neither knows fails the check (kubernetes-validate itself only warns).
- The pieces fit: selectors of Services and PodDisruptionBudgets match pods; autoscalers target
  Deployments that exist; the KEDA query and the query prometheus-adapter builds for the HPA are
  the same; every worker's grace period matches the systemd unit's TimeoutStopSec; images are
  tagged with the workspace version; probes name container ports; and, with --worker-help, every
  variable and flag given to `a3s-code worker` (manifests, the systemd EnvironmentFile example)
  is one its --help lists.

Before the real files it runs itself on broken copies (an unknown field, a mistyped trigger, a
CEL violation, an unknown kind) and fails unless each is rejected.
"""

import argparse
import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MANIFESTS = ROOT / "kubernetes"
SCHEMAS = MANIFESTS / "schemas"
SYSTEMD_UNIT = ROOT / "systemd" / "a3s-code-worker@.service"
GAUGE = "a3s_fleet_worker_slots_needed"

Doc = dict[str, Any]


# ----- custom resources ----------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's structural schema as a JSON Schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k not in ("x-kubernetes-validations",)}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def cel_rules(schema: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, rule) of every x-kubernetes-validations rule in a schema."""
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            yield path, rule["rule"]
        for key, value in schema.items():
            if key == "properties":
                for name, sub in value.items():
                    yield from cel_rules(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties"):
                yield from cel_rules(value, f"{path}[]")


def keda_min_le_max(spec: Doc) -> Optional[str]:
    low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
    if low is not None and low > high:
        return "minReplicaCount must be less than or equal to maxReplicaCount"
    return None


# The CEL rules of the vendored CRDs, by (kind, path, rule text), implemented in Python.
KNOWN_CEL: dict[tuple[str, str, str], Callable[[Doc], Optional[str]]] = {
    ("ScaledObject", ".spec",
     "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)"):
        keda_min_le_max,
}


class CustomKind:
    def __init__(self, kind: str, schema: Doc, rules: list[tuple[str, Callable[[Doc], Optional[str]]]]):
        self.kind, self.schema, self.rules = kind, schema, rules


def load_crds() -> dict[tuple[str, str], CustomKind]:
    kinds = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                raw = version["schema"]["openAPIV3Schema"]
                rules = []
                for where, rule in cel_rules(raw):
                    check = KNOWN_CEL.get((kind, where, " ".join(rule.split())))
                    if check is None:
                        raise SystemExit(f"{path.name}: {kind} has a CEL rule this checker does not implement "
                                         f"at {where or '.'}: {rule!r}; add it to KNOWN_CEL")
                    rules.append((where, check))
                kinds[(f"{group}/{version['name']}", kind)] = CustomKind(kind, strict(raw), rules)
    return kinds


def object_meta_validator() -> jsonschema.protocols.Validator:
    """Kubernetes' ObjectMeta (strict), from kubernetes-validate's bundled definitions."""
    version = kv.latest_version()
    defs = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    registry = referencing.Resource.from_contents(defs) @ referencing.Registry()
    ref = {"$ref": f"{defs['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return jsonschema.Draft202012Validator(ref, registry=registry)


# ----- validation ----------------------------------------------------------------------------


class Checker:
    def __init__(self) -> None:
        self.crds = load_crds()
        self.meta = object_meta_validator()
        self.version = kv.latest_version()

    def errors(self, doc: Doc) -> list[str]:
        """Why `doc` is not a valid object, or [] if it is."""
        key = (doc.get("apiVersion"), doc.get("kind"))
        custom = self.crds.get(key)  # type: ignore[arg-type]
        if custom is not None:
            found = [f"{'.'.join(map(str, e.path)) or '.'}: {e.message}"
                     for e in jsonschema.Draft202012Validator(custom.schema).iter_errors(doc)]
            found += [".".join(["metadata", *map(str, e.path)]) + f": {e.message}"
                      for e in self.meta.iter_errors(doc.get("metadata", {}))]
            if not found:
                for where, check in custom.rules:
                    target: Any = doc
                    for part in where.strip(".").split("."):
                        target = target.get(part, {}) if part else target
                    problem = check(target)
                    if problem:
                        found.append(f"{where}: {problem}")
            return found
        try:
            kv.validate(doc, self.version, strict=True)
        except kv.ValidationError as e:
            return [f"{'.'.join(map(str, e.path)) or '.'}: {e.message}"]
        except kv.SchemaNotFoundError:
            return [(f"{key[1]} ({key[0]}) is known to neither kubernetes-validate {self.version} "
                    f"nor a CRD under {SCHEMAS.relative_to(REPO)}/")]
        return []


def load_manifests() -> list[tuple[Path, Doc]]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if SCHEMAS in path.parents:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def self_test(checker: Checker, docs: list[tuple[Path, Doc]]) -> None:
    """The checker rejects what it must (run before trusting its verdict on the real files)."""
    by_kind = {doc["kind"]: doc for _, doc in docs}
    scaled, deployment = by_kind["ScaledObject"], by_kind["Deployment"]

    def broken(doc: Doc, change: Callable[[Doc], None]) -> Doc:
        doc = copy.deepcopy(doc)
        change(doc)
        return doc

    cases = [
        ("a misspelt ScaledObject field",
         broken(scaled, lambda d: d["spec"].__setitem__("maxReplicas", 3))),
        ("a trigger without metadata",
         broken(scaled, lambda d: d["spec"]["triggers"][0].pop("metadata"))),
        ("a non-string trigger value",
         broken(scaled, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("threshold", 8))),
        ("minReplicaCount > maxReplicaCount (CEL)",
         broken(scaled, lambda d: d["spec"].__setitem__("minReplicaCount", 30))),
        ("a ScaledObject label that is not a string (ObjectMeta)",
         broken(scaled, lambda d: d["metadata"].__setitem__("labels", {"a b": 1}))),
        ("a misspelt Deployment field",
         broken(deployment, lambda d: d["spec"]["template"]["spec"].__setitem__("terminationGracePeriod", 75))),
        ("a kind nobody knows",
         {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}),
    ]
    for what, doc in cases:
        if not checker.errors(doc):
            raise SystemExit(f"self-test: the checker accepted {what}")
    print(f"self-test: {len(cases)} broken manifests rejected (unknown fields, types, CEL, unknown kind)")


# ----- do the pieces fit ---------------------------------------------------------------------


def pod_specs(docs: list[tuple[Path, Doc]]) -> Iterator[tuple[str, Doc, Doc]]:
    """(name, workload, pod template) of every Deployment and Job."""
    for _, doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']} {doc['metadata']['name']}", doc, doc["spec"]["template"]


def worker_help(binary: str, command: str = "worker") -> tuple[set, set]:
    text = subprocess.run([binary, command, "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", text)), set(re.findall(r"--([a-z][a-z-]*)", text))


def subcommand(container: Doc) -> str:
    """The `a3s-code` command a container runs: the image's `worker`, or its `command`'s."""
    command = container.get("command") or []
    return command[1] if len(command) > 1 and command[0] == "/a3s-code" else "worker"


def workspace_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    match = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', text, re.MULTILINE | re.DOTALL)
    if not match:
        raise SystemExit("no [workspace.package] version in Cargo.toml")
    return match.group(1)


def fit(docs: list[tuple[Path, Doc]], binary: Optional[str]) -> list[str]:
    problems = []
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in docs}
    pods = list(pod_specs(docs))

    for kind in ("Service", "PodDisruptionBudget"):
        for (k, name), doc in objects.items():
            if k != kind:
                continue
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            if not any(selector.items() <= pod["metadata"]["labels"].items() for _, _, pod in pods):
                problems.append(f"{kind} {name}: its selector {selector} matches no pod")

    keda_query = hpa_query = None
    for (kind, name), doc in objects.items():
        if kind == "ScaledObject":
            target = doc["spec"]["scaleTargetRef"]
            if (target.get("kind", "Deployment"), target["name"]) not in objects:
                problems.append(f"ScaledObject {name}: no Deployment {target['name']}")
            keda_query = doc["spec"]["triggers"][0]["metadata"]["query"]
        if kind == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            if (target["kind"], target["name"]) not in objects:
                problems.append(f"HorizontalPodAutoscaler {name}: no {target['kind']} {target['name']}")
            metric = doc["spec"]["metrics"][0]["external"]["metric"]
            matchers = ",".join(f'{k}="{v}"' for k, v in metric["selector"]["matchLabels"].items())
            adapter = yaml.safe_load(objects[("ConfigMap", "prometheus-adapter")]["data"]["config.yaml"])
            rule = next(r for r in adapter["externalRules"] if r["name"]["as"] == metric["name"])
            hpa_query = rule["metricsQuery"].replace("<<.Series>>", metric["name"]).replace(
                "<<.LabelMatchers>>", matchers)
    if keda_query is None or hpa_query is None:
        problems.append("expected a ScaledObject and an HPA (with the prometheus-adapter rule)")
    elif keda_query != hpa_query or GAUGE not in keda_query:
        problems.append(f"KEDA's query {keda_query!r} and the HPA's (through the adapter) {hpa_query!r} differ")

    unit = SYSTEMD_UNIT.read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.MULTILINE)
    version = workspace_version()
    for name, _, pod in pods:
        spec = pod["spec"]
        grace = spec.get("terminationGracePeriodSeconds")
        # Workers drain tasks for up to the longest lane timeout; so does everything else here.
        if not stop or grace != int(stop.group(1)):
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} is not the systemd unit's "
                            f"TimeoutStopSec {stop.group(1) if stop else None} (both: longest lane timeout + 15 s)")
        for c in spec["containers"]:
            image = c["image"]
            if not re.fullmatch(rf"localhost/a3s-code-worker:{re.escape(version)}(-tools)?", image):
                problems.append(f"{name}: image {image} is not localhost/a3s-code-worker:{version}[-tools] "
                                f"(the workspace version; what scripts/container.sh build tags)")
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{name}: {probe} names port {port!r}, not one of {sorted(ports)}")
            if binary:
                command = subcommand(c)
                envs, flags = worker_help(binary, command)
                given = {e["name"] for e in c.get("env", [])}
                for source in c.get("envFrom", []):
                    ref = source.get("configMapRef") or source.get("secretRef")
                    kind = "ConfigMap" if "configMapRef" in source else "Secret"
                    found = objects.get((kind, ref["name"]))
                    if found is None:
                        problems.append(f"{name}: envFrom {kind} {ref['name']} is not in deploy/kubernetes")
                        continue
                    given |= set(found.get("data", {})) | set(found.get("stringData", {}))
                for var in sorted(given - envs):
                    problems.append(f"{name}: {var} is not a variable of `a3s-code {command}`")
                for arg in c.get("args", []):
                    if arg.startswith("--") and arg[2:].split("=")[0] not in flags:
                        problems.append(f"{name}: {arg} is not a flag of `a3s-code {command}`")
    if binary:
        envs, _ = worker_help(binary)
        example = SYSTEMD_UNIT.parent / "worker.env.example"
        for var in re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example.read_text(), re.MULTILINE):
            if var not in envs | {"A3S_LOG"}:
                problems.append(f"{example.relative_to(REPO)}: {var} is not a variable of `a3s-code worker`")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker-help", metavar="BINARY", help="check variables and flags against BINARY worker --help")
    args = ap.parse_args()

    checker = Checker()
    docs = load_manifests()
    self_test(checker, docs)

    failed = False
    for path, doc in docs:
        where = f"{path.relative_to(REPO)}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        errors = checker.errors(doc)
        how = "CRD schema (vendored)" if (doc.get("apiVersion"), doc.get("kind")) in checker.crds \
            else f"kubernetes-validate {checker.version} --strict"
        for e in errors:
            print(f"FAIL {where}: {e}")
        if not errors:
            print(f"ok   {where} ({how})")
        failed |= bool(errors)
    problems = fit(docs, args.worker_help)
    for p in problems:
        print(f"FAIL {p}")
    if failed or problems:
        sys.exit(1)
    print(f"{len(docs)} manifests valid; selectors, autoscaler targets and queries, grace periods, images"
          f"{', worker variables and flags' if args.worker_help else ''} fit together")


if __name__ == "__main__":
    main()
