"""The Helm chart's test: lint (strict), render with the default values and with every option
on, validate each rendered object against the Kubernetes schemas, check the security and
operational properties the README promises, check that values.schema.json refuses bad values,
and run the rendered tollgate.toml and policies through `tollgate serve --check-config`.

    .venv/bin/python scripts/chart_test.py target/debug/tollgate

Needs helm-python-sdk (Helm's SDK, no helm binary) and kubernetes-validate; scripts/test
installs both into .venv. Prints one line per check; exits 1 on the first failure.
"""

import glob
import os
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "tollgate")
EXAMPLE = os.path.join(ROOT, "helm", "examples", "workload.yaml")
KUBE = "1.30.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}
checks = 0


def check(ok, what):
    global checks
    if not ok:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}")


def shipped_policies():
    files = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "policies", "*.yaml"))):
        with open(path) as f:
            files[os.path.basename(path)] = f.read()
    return files


FULL = {
    "migrations": {"mode": "initContainer"},
    "autoscaling": {"enabled": True},
    "networkPolicy": {"enabled": True, "allowNamespaces": ["team-a", "team-b"]},
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tollgate"}},
    "policies": {"files": shipped_policies()},
    "extraEnv": [{"name": "OTEL_EXPORTER_OTLP_HEADERS",
                  "valueFrom": {"secretKeyRef": {"name": "otel-auth", "key": "headers"}}}],
}


def image_user():
    """The numeric user the Dockerfile's image runs as; its entrypoint must be the binary."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    user = [l.split()[1] for l in text.splitlines() if l.startswith("USER ")][-1]
    entry = [l for l in text.splitlines() if l.startswith("ENTRYPOINT ")][-1]
    assert entry == 'ENTRYPOINT ["/usr/local/bin/tollgate"]', entry
    return int(user.split(":")[0])


IMAGE_USER = image_user()


def render(values):
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="tollgate", namespace="tollgate", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def containers(doc):
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "tollgate")

    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    check(not report.get("errors") and not problems, f"helm lint --strict: {problems or 'clean'}")

    for label, values in [("default values", {}), ("every option on", FULL)]:
        docs = render(values)
        kinds = sorted({d["kind"] for _, d in docs})
        check(docs, f"{label}: renders {kinds}")
        for path, doc in docs:
            if doc["kind"] in CRDS:
                check(doc["apiVersion"] == "monitoring.coreos.com/v1" and doc.get("spec"),
                      f"{label}: {doc['kind']} has its spec")
                continue
            try:
                kubernetes_validate.validate(doc, KUBE, strict=True)
            except Exception as e:  # noqa: BLE001 - the validator raises several types
                check(False, f"{label}: {path} {doc['kind']} is a valid Kubernetes object: {e}")
            check(True, f"{label}: {doc['kind']} {doc['metadata']['name']} valid for Kubernetes {KUBE}")
        by_kind = {d["kind"]: d for _, d in docs}
        deploy = by_kind["Deployment"]
        for c in containers(deploy) + [c for _, d in docs if d["kind"] == "Job" for c in containers(d)]:
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") and sc.get("runAsNonRoot")
                  and sc.get("allowPrivilegeEscalation") is False
                  and sc.get("capabilities", {}).get("drop") == ["ALL"],
                  f"{label}: container {c['name']} is non-root, read-only, without capabilities")
            env = {e["name"]: e for e in c.get("env", [])}
            for name in ["TOLLGATE_DATABASE_URL", "TOLLGATE_SIGNING__KEY_ENCRYPTION_KEY"]:
                check("secretKeyRef" in env[name].get("valueFrom", {}) and "value" not in env[name],
                      f"{label}: {c['name']} reads {name} from a Secret")
        app = deploy["spec"]["template"]["spec"]["containers"][0]
        check(app["securityContext"]["runAsUser"] == IMAGE_USER and app["args"][0] == "serve",
              f"{label}: runs as the image's user ({IMAGE_USER}) with the image's entrypoint")
        check(app["readinessProbe"]["httpGet"]["path"] == "/readyz"
              and app["livenessProbe"]["httpGet"]["path"] == "/healthz",
              f"{label}: probes on /readyz and /healthz")
        check(app["resources"]["requests"]["cpu"] and app["resources"]["limits"]["memory"],
              f"{label}: resource requests and a memory limit")
        anti = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        check(anti["preferredDuringSchedulingIgnoredDuringExecution"], f"{label}: replicas spread over nodes")
        check(by_kind["PodDisruptionBudget"]["spec"]["minAvailable"] == 2, f"{label}: a PodDisruptionBudget")
        if values is FULL:
            check("replicas" not in deploy["spec"], "autoscaling: the HPA owns the replica count")
            check(deploy["spec"]["template"]["spec"]["initContainers"][0]["args"][0] == "migrate",
                  "migrations as an init container")
            rules = by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"]
            check(len(rules) >= 6, f"PrometheusRule: {[r['alert'] for r in rules]}")
            env = {e["name"]: e for e in app.get("env", [])}
            check(env.get("OTEL_EXPORTER_OTLP_HEADERS", {}).get("valueFrom", {}).get("secretKeyRef"),
                  "extraEnv: the collector's credentials from a Secret")
            near = [r for r in rules if r["alert"] == "TollgateBudgetNearCap"]
            check(near and near[0]["expr"].endswith("> 0.9")
                  and "{{ $labels.pool }}" in near[0]["annotations"]["summary"]
                  and "90 %" in near[0]["annotations"]["summary"],
                  "PrometheusRule: a pool near its cap, at the share the values set")
            dash = [d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
            check(dash and dash[0]["metadata"]["labels"]["grafana_dashboard"] == "1",
                  "the Grafana dashboard ConfigMap")
            check_config(binary, docs)
        else:
            check(deploy["spec"]["replicas"] == 3, "3 replicas by default")
            check(any(d["kind"] == "Job" for _, d in docs), "migrations as a pre-install/upgrade Job by default")

    # A config change rolls the pods; a policy change reloads in place (no new checksum).
    def checksum(values):
        deploy = [d for _, d in render(values) if d["kind"] == "Deployment"][0]
        return deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    base = checksum({})
    check(checksum({"policies": {"files": {"pools.yaml": "pools: {}\n"}}}) == base,
          "a policy change reloads in place: the pods' checksum stays")
    check(checksum({"config": 'public_url = "https://other.example"\n'}) != base,
          "a config change rolls the pods: the checksum changes")

    # values.schema.json refuses what would deploy something broken or leak a secret.
    for bad, why in [
        ({"replicaCount": "three"}, "a replica count that is not a number"),
        ({"extraEnv": [{"name": "TOLLGATE_DATABASE_URL", "value": "postgres://u:p@db/x"}]},
         "the database URL inline through extraEnv"),
        ({"metrics": {"prometheusRule": {"enabled": True, "budgetUtilization": 2}}},
         "a budget alert share over 1"),
        ({"config": 'database_url = "postgres://u:p@db/x"'}, "a database URL inline in the config"),
        ({"secrets": {"databaseUrl": {"name": "", "key": "url"}, "keyEncryptionKey": {"name": "k", "key": "k"}}},
         "an empty Secret name"),
        ({"migrations": {"mode": "sometimes"}}, "an unknown migrations mode"),
        ({"replicas": 3}, "an unknown top-level value"),
    ]:
        try:
            render(bad)
            refused = False
        except helm.HelmError:
            refused = True
        check(refused, f"values.schema.json refuses {why}")

    # The example values files render into valid objects and a config that passes.
    for path in sorted(glob.glob(os.path.join(ROOT, "helm", "examples", "values-*.yaml"))):
        with open(path) as f:
            values = yaml.safe_load(f)
        values.setdefault("policies", {"files": shipped_policies()})
        docs = render(values)
        for _, doc in docs:
            if doc["kind"] not in CRDS:
                kubernetes_validate.validate(doc, KUBE, strict=True)
        check(True, f"{os.path.basename(path)}: {len(docs)} objects valid")
        check_config(binary, docs)

    # The example workload is valid as written.
    with open(EXAMPLE) as f:
        for doc in yaml.safe_load_all(f):
            kubernetes_validate.validate(doc, KUBE, strict=True)
            check(True, f"helm/examples/workload.yaml: {doc['kind']} {doc['metadata']['name']} valid")

    print(f"chart: {checks} checks passed")


def check_config(binary, docs):
    """The rendered tollgate.toml and policy files pass `tollgate serve --check-config`."""
    maps = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ConfigMap"}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tollgate.toml"), "w") as f:
            f.write(maps["tollgate"]["data"]["tollgate.toml"])
        os.mkdir(os.path.join(tmp, "policies"))
        for name, text in maps["tollgate-policies"]["data"].items():
            with open(os.path.join(tmp, "policies", name), "w") as f:
                f.write(text)
        env = dict(os.environ,
                   TOLLGATE_DATABASE_URL="postgres://tollgate@db:5432/tollgate",
                   TOLLGATE_SIGNING__KEY_ENCRYPTION_KEY="3q2+78r+ur7erb7v3q2+78r+ur7erb7v3q2+78r+ur4=",
                   TOLLGATE_POLICY_DIR=os.path.join(tmp, "policies"))
        out = subprocess.run([binary, "serve", "--check-config", "--config", os.path.join(tmp, "tollgate.toml")],
                             env=env, capture_output=True, text=True)
        check(out.returncode == 0, f"tollgate serve --check-config on the rendered config: {out.stderr.strip()}")


if __name__ == "__main__":
    main()
