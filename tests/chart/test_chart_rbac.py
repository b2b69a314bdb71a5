"""The chart's RBAC grants exactly what lamina_operator.rbac says the operator needs."""

from __future__ import annotations

import pytest
from chart_helpers import CHART, render, run_helm

from lamina_operator import rbac


def triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a rule list allows."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o
        for o in objects
        if o["kind"] == kind
    }


def test_all_namespaces_cluster_role_equals_the_operators_needs_but_reading_secrets(helm):
    objects = render(helm)
    roles = _by_kind(objects, "ClusterRole")
    assert set(roles) == {"/lamina", "/lamina-secrets"}
    assert triples(roles["/lamina"]["rules"]) == triples(rbac.cluster_role_rules())
    assert triples(roles["/lamina-secrets"]["rules"]) == triples(rbac.SECRET_READ_RULES)
    # all the operator needs = the ClusterRole + reading Secrets, granted per namespace
    assert triples(rbac.cluster_role_rules() + rbac.SECRET_READ_RULES) == triples(rbac.all_rules())


def test_by_default_secrets_are_created_everywhere_and_read_nowhere(helm):
    """The default install reconciles a managed Redis anywhere (it creates the password Secret)
    but cannot read a single Secret."""
    objects = render(helm)
    (binding,) = _by_kind(objects, "ClusterRoleBinding").values()
    assert binding["roleRef"]["name"] == "lamina"  # not lamina-secrets
    assert _by_kind(objects, "RoleBinding") == {}
    role = _by_kind(objects, "ClusterRole")["/lamina"]
    secret_verbs = {verb for group, resource, verb in triples(role["rules"])
                    if (group, resource) == ("", "secrets")}  # fmt: skip
    assert secret_verbs == {"create", "delete"}


def test_secrets_only_in_the_listed_namespaces(helm):
    objects = render(helm, "--set", "rbac.secretNamespaces={serving,team-b}")
    bindings = _by_kind(objects, "RoleBinding")
    assert set(bindings) == {"serving/lamina-secrets", "team-b/lamina-secrets"}
    for binding in bindings.values():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "lamina-secrets",
        }
        assert binding["subjects"][0]["namespace"] == "lamina-system"
    assert len(_by_kind(objects, "ClusterRoleBinding")) == 1


def test_secrets_everywhere_only_when_asked(helm):
    objects = render(helm, "--set", "rbac.secretsInAllNamespaces=true")
    refs = {b["roleRef"]["name"] for b in _by_kind(objects, "ClusterRoleBinding").values()}
    assert refs == {"lamina", "lamina-secrets"}


@pytest.mark.parametrize(
    "setting", ["rbac.secretNamespaces={serving}", "rbac.secretsInAllNamespaces=true"]
)
def test_secret_settings_of_a_namespaced_install_are_refused(helm, setting):
    # A namespaced install's Roles grant Secrets already: the setting would be ignored.
    namespaced = str(CHART / "ci" / "namespaced-values.yaml")
    proc = run_helm(helm, "template", "lamina", str(CHART), "-f", namespaced, "--set", setting)
    assert proc.returncode != 0 and "apply with watch.allNamespaces only" in proc.stderr


def test_namespaced_roles_equal_the_operators_needs(helm):
    objects = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    roles = [o for o in objects if o["kind"] == "Role"]
    assert len(roles) == 2
    for role in roles:
        assert triples(role["rules"]) == triples(rbac.all_rules(clusterwide=False))
    assert not _by_kind(objects, "ClusterRole")  # no cluster-wide rights at all


@pytest.mark.parametrize("values", [(), ("-f", str(CHART / "ci" / "namespaced-values.yaml"))])
def test_no_wildcards_and_no_rights_to_grant_rights(helm, values):
    for obj in render(helm, *values):
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert "rbac.authorization.k8s.io" not in rule["apiGroups"], rule
