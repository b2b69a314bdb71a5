"""What `lamina-operator run` does about its peering object (issue: --all-namespaces with no
ClusterKopfPeering reconciled nothing and logged nothing). e2e/test_peering.py runs the same
against a real API server."""

from __future__ import annotations

import logging

import kopf
import pytest
import yaml

from lamina_operator.handlers.peering import manifest, settle_peering
from lamina_operator.settings import configure

LOG = logging.getLogger("test.peering")


def _settings(clusterwide: bool, explicit: bool) -> kopf.OperatorSettings:
    """Settings as kopf.run leaves them (then our startup's configure)."""
    settings = kopf.OperatorSettings()
    settings.peering.clusterwide = clusterwide
    if explicit:
        settings.peering.mandatory = True
        settings.peering.name = "lamina-operator"
    configure(settings)
    return settings


def _lookup(existing: set[tuple[str | None, str]]):
    asked = []

    def exists(namespace, name):
        asked.append((namespace, name))
        return (namespace, name) in existing

    return exists, asked


def test_all_namespaces_without_peering_runs_standalone_and_says_so(caplog):
    settings = _settings(clusterwide=True, explicit=False)
    exists, asked = _lookup(set())
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        settle_peering(settings, False, [], exists, LOG)
    assert asked == [(None, "lamina-operator")]
    assert settings.peering.standalone and not settings.peering.mandatory
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "ClusterKopfPeering 'lamina-operator' does not exist: running standalone" in text
    assert "kind: ClusterKopfPeering" in text and "kubectl apply -f -" in text


def test_explicit_peering_that_is_missing_waits_and_says_how_to_fix(caplog):
    settings = _settings(clusterwide=True, explicit=True)
    exists, _ = _lookup(set())
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        settle_peering(settings, True, [], exists, LOG)
    assert settings.peering.mandatory and not settings.peering.standalone
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "nothing is reconciled until it exists" in record.getMessage()
    assert "--standalone" in record.getMessage()


@pytest.mark.parametrize("explicit", [False, True])
def test_existing_peering_is_mandatory(explicit, caplog):
    settings = _settings(clusterwide=False, explicit=explicit)
    exists, asked = _lookup({("a", "lamina-operator"), ("b", "lamina-operator")})
    settle_peering(settings, explicit, ["a", "b"], exists, LOG)
    assert asked == [("a", "lamina-operator"), ("b", "lamina-operator")]
    assert settings.peering.mandatory and not settings.peering.standalone
    assert not caplog.records


def test_one_namespace_missing_its_peering_is_named(caplog):
    settings = _settings(clusterwide=False, explicit=False)
    exists, _ = _lookup({("a", "lamina-operator")})
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        settle_peering(settings, False, ["a", "b"], exists, LOG)
    assert settings.peering.standalone
    text = caplog.records[0].getMessage()
    assert "KopfPeering 'lamina-operator' in namespace 'b'" in text and "'a'" not in text


def test_standalone_and_patterns_are_left_to_kopf():
    settings = _settings(clusterwide=False, explicit=False)
    settings.peering.standalone = True
    exists, asked = _lookup(set())
    settle_peering(settings, False, ["a"], exists, LOG)
    patterns = _settings(clusterwide=False, explicit=False)
    settle_peering(patterns, False, ["team-*"], exists, LOG)
    assert asked == [] and not patterns.peering.standalone and not patterns.peering.mandatory


def test_unreadable_peering_leaves_kopf_as_configured():
    settings = _settings(clusterwide=True, explicit=False)
    settle_peering(settings, False, [], lambda ns, name: None, LOG)
    assert not settings.peering.standalone and not settings.peering.mandatory


def test_the_suggested_manifests_are_what_kopf_reads():
    cluster = yaml.safe_load(manifest("p", None))
    assert cluster == {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                       "metadata": {"name": "p"}}  # fmt: skip
    namespaced = yaml.safe_load(manifest("p", "ns"))
    assert namespaced["kind"] == "KopfPeering" and namespaced["metadata"]["namespace"] == "ns"
