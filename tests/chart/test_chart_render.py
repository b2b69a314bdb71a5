"""The chart with a real helm: lint, render every ci/ scenario, validate what comes out."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
from chart_helpers import CHART, CI_VALUES, crd_schemas, pod_specs, render, run_helm

KUBE_VERSION = "1.30"


def test_ci_scenarios_exist():
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "namespaced-values.yaml"}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict(helm, values):
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_objects_validate_against_kubernetes_schemas(helm, values):
    objects = render(helm, "-f", str(values))
    assert {"Deployment", "ServiceAccount"} <= {o["kind"] for o in objects}
    assert {"ClusterRole", "Role"} & {o["kind"] for o in objects}
    custom = crd_schemas()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in custom:
            # kopf's peering objects: checked against the CRD the chart installs with them.
            jsonschema.Draft4Validator(custom[key]).validate(obj)
        else:
            # strict: unknown fields are errors too (a misspelt key would be silently dropped).
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_pod_is_locked_down(helm, values):
    specs = pod_specs(render(helm, "-f", str(values)))
    assert specs, "the chart renders no workload"
    for name, spec in specs:
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container.get("securityContext") or {}
            where = f"{name}/{container['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where


def operator_container(objects):
    (deploy,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return deploy, container


def test_default_install_watches_all_namespaces_with_a_cluster_role(helm):
    objects = render(helm)
    deploy, container = operator_container(objects)
    assert container["command"] == ["lamina-operator", "run"]
    assert "--all-namespaces" in container["args"]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": "lamina-system"}
    ]


def test_namespaced_install_gets_one_role_per_watched_namespace(helm):
    objects = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    _, container = operator_container(objects)
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]
    assert "--all-namespaces" not in container["args"]
    roles = {o["metadata"]["namespace"] for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"] for o in objects if o["kind"] == "RoleBinding"}
    assert roles == bindings == {"team-a", "team-b"}
    # A namespaced install has no cluster-wide rights at all.
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_liveness_probe_targets_the_endpoint_the_operator_serves(helm):
    _, container = operator_container(render(helm, "--set", "health.port=9091"))
    probe = container["livenessProbe"]["httpGet"]
    (port,) = [p for p in container["ports"] if p["name"] == probe["port"]]
    assert port["containerPort"] == 9091
    # `lamina-operator run --liveness-port N` serves GET /healthz on N.
    assert probe["path"] == "/healthz"
    assert "--liveness-port=9091" in container["args"]


def test_peering_objects_exist_for_the_leader_election_the_operator_is_told_to_use(helm):
    objects = render(helm)
    _, container = operator_container(objects)
    assert "--peering=lamina-operator" in container["args"]
    (peering,) = [o for o in objects if o["kind"] == "ClusterKopfPeering"]
    assert peering["metadata"]["name"] == "lamina-operator"

    objects = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    assert {p["metadata"]["namespace"] for p in peerings} == {"team-a", "team-b"}

    objects = render(helm, "--set", "peering.enabled=false")
    _, container = operator_container(objects)
    assert "--standalone" in container["args"]
    assert not [o for o in objects if "KopfPeering" in o["kind"]]


def test_several_replicas_without_peering_are_refused(helm):
    proc = run_helm(
        helm,
        "template",
        "lamina",
        str(CHART),
        "--set",
        "peering.enabled=false",
        "--set",
        "replicas=2",
    )
    assert proc.returncode != 0 and "needs peering.enabled" in proc.stderr


def test_one_port_for_metrics_and_health_is_refused(helm):
    proc = run_helm(helm, "template", "lamina", str(CHART), "--set", "metrics.port=8080")
    assert proc.returncode != 0 and "metrics.port and health.port must differ" in proc.stderr


def test_watching_no_namespace_is_refused_with_a_clear_message(helm):
    proc = run_helm(helm, "template", "lamina", str(CHART), "--set", "watch.allNamespaces=false")
    assert proc.returncode != 0
    assert "watch.namespaces must list at least one namespace" in proc.stderr


@pytest.mark.parametrize(
    "override, field",
    [
        ("replicas=-1", "replicas"),
        ("watchAll=true", "watchAll"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ],
)
def test_values_schema_rejects_bad_values(helm, override, field):
    proc = run_helm(helm, "template", "lamina", str(CHART), "--set", override)
    assert proc.returncode != 0
    assert field in proc.stderr


def test_operator_pods_carry_the_label_engine_policies_admit(helm):
    """Engine NetworkPolicies admit pods labelled lamina.dev/operator=true (the autoscaler
    reads their /metrics); the label is on the pods, not in the immutable selector."""
    from lamina_operator.constants import OPERATOR_POD_LABEL

    (operator,) = [o for o in render(helm) if o["kind"] == "Deployment"]
    assert operator["spec"]["template"]["metadata"]["labels"][OPERATOR_POD_LABEL] == "true"
    assert OPERATOR_POD_LABEL not in operator["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values", [(), ("--set", "extraEnv[0].name=A,extraEnv[0].value=b")])
def test_operator_knows_its_namespace(helm, values):
    """...so engine NetworkPolicies admit the operator's pods from that namespace only."""
    from lamina_operator.constants import OPERATOR_NAMESPACE_ENV

    (operator,) = [o for o in render(helm, *values) if o["kind"] == "Deployment"]
    env = {e["name"]: e for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[OPERATOR_NAMESPACE_ENV]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert ("A" in env) == bool(values)


def _seed_secrets(objects):
    return [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-seed")]


def _seed_env(objects):
    _, container = operator_container(objects)
    (var,) = [e for e in container["env"] if e["name"] == "LAMINA_OPERATOR_KEY_SEED"]
    return var["valueFrom"]["secretKeyRef"]


def test_the_operator_gets_a_generated_key_seed_that_outlives_the_release(helm):
    """Every ServingDeployment's internal key is derived from this seed: it is random, read by
    the operator through secretKeyRef, kept by `helm uninstall` (and found by `lookup` on an
    upgrade, which `helm template` cannot show)."""
    import base64

    objects = render(helm)
    (secret,) = _seed_secrets(objects)
    assert secret["metadata"]["name"] == "lamina-key-seed"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    seed = base64.b64decode(secret["data"]["seed"]).decode()
    assert len(seed) == 64 and seed.isalnum()
    assert _seed_env(objects) == {"name": "lamina-key-seed", "key": "seed"}
    (again,) = _seed_secrets(render(helm))
    assert again["data"]["seed"] != secret["data"]["seed"]  # generated, not a constant


def test_an_explicit_or_existing_seed(helm):
    import base64

    pinned = "p" * 40
    objects = render(helm, "--set", f"internalKeys.seed={pinned}")
    (secret,) = _seed_secrets(objects)
    assert base64.b64decode(secret["data"]["seed"]).decode() == pinned
    # a new explicit seed restarts the operator (it reads the seed at start)
    deploy, _ = operator_container(objects)
    first = deploy["spec"]["template"]["metadata"]["annotations"]["lamina.dev/key-seed-sha256"]
    deploy, _ = operator_container(render(helm, "--set", f"internalKeys.seed={'q' * 40}"))
    assert (
        deploy["spec"]["template"]["metadata"]["annotations"]["lamina.dev/key-seed-sha256"] != first
    )

    objects = render(helm, "--set", "internalKeys.existingSecret=my-seed")
    assert _seed_secrets(objects) == []  # the user's Secret: the chart makes none
    assert _seed_env(objects) == {"name": "my-seed", "key": "seed"}

    proc = run_helm(helm, "template", "lamina", str(CHART), "--set", "internalKeys.seed=short")
    assert proc.returncode != 0 and "internalKeys.seed must be at least 32" in proc.stderr
