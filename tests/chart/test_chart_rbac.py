"""The chart's RBAC grants exactly what lamina_operator.rbac says the operator needs."""

from __future__ import annotations

import pytest
from chart_helpers import CHART, render

rbac = pytest.importorskip("lamina_operator.rbac", reason="the operator package is not installed")


def triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a rule list allows."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_all_namespaces_cluster_role_equals_the_operators_needs(helm):
    objects = render(helm)
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert triples(role["rules"]) == triples(rbac.all_rules(clusterwide=True))


def test_namespaced_roles_equal_the_operators_needs(helm):
    objects = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    roles = [o for o in objects if o["kind"] == "Role"]
    assert len(roles) == 2
    for role in roles:
        assert triples(role["rules"]) == triples(rbac.all_rules(clusterwide=False))


@pytest.mark.parametrize("values", [(), ("-f", str(CHART / "ci" / "namespaced-values.yaml"))])
def test_no_wildcards_and_no_rights_to_grant_rights(helm, values):
    for obj in render(helm, *values):
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert "rbac.authorization.k8s.io" not in rule["apiGroups"], rule
