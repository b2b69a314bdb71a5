"""A namespaced operator must not need cluster-wide list rights (its Role grants none)."""

import kopf

from lamina_operator.settings import SCAN_CLUSTER, configure, needs_cluster_scan


def test_scanning_only_when_namespaces_are_open_ended():
    assert needs_cluster_scan(True, [])
    assert needs_cluster_scan(False, ["team-*"])
    assert not needs_cluster_scan(False, ["lamina", "prod"])


def test_configure_disables_scanning_for_fixed_namespaces():
    settings = kopf.OperatorSettings()
    SCAN_CLUSTER["enabled"] = False
    try:
        configure(settings)
        assert settings.scanning.disabled
    finally:
        SCAN_CLUSTER["enabled"] = True
    configure(settings)
    assert not settings.scanning.disabled
