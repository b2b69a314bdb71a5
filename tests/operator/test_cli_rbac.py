"""The console script, kopf wiring and the RBAC list the chart mirrors."""

from __future__ import annotations

import kopf
import pytest
import yaml

from lamina_operator import cli, rbac
from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import BuildContext, Owner, build_children
from lamina_operator.constants import FINALIZER
from lamina_operator.reconcile.children import CHILD_KINDS
from lamina_operator.settings import configure


def test_crds_prints_all_documents(capsys):
    assert cli.main(["crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [
        "servingdeployments.lamina.dev",
        "autoscalingpolicies.lamina.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ]


def test_crds_check_detects_drift(tmp_path, capsys):
    assert cli.main(["crds", "--output", str(tmp_path)]) == 0
    assert cli.main(["crds", "--output", str(tmp_path), "--check"]) == 0
    (tmp_path / "lamina.dev_servingdeployments.yaml").write_text("stale")
    assert cli.main(["crds", "--output", str(tmp_path), "--check"]) == 1
    assert "is out of date" in capsys.readouterr().out


def test_crds_check_without_a_directory_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["crds", "--check"])
    assert exc.value.code == 2
    assert "--check needs --output DIR" in capsys.readouterr().err


def test_crds_yaml_has_no_anchors(capsys):
    # Two schema nodes built from one dict must still be written out in full.
    assert cli.main(["crds"]) == 0
    out = capsys.readouterr().out
    assert "&id" not in out and "*id" not in out


def test_run_refuses_one_port_for_metrics_and_liveness(capsys):
    assert cli.main(["run", "-A", "--metrics-port", "8080", "--liveness-port", "8080"]) == 2
    assert "give them different ports" in capsys.readouterr().err


def test_run_requires_a_scope(capsys):
    assert cli.main(["run"]) == 2
    assert "--all-namespaces" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--namespace", "a", "--all-namespaces"])


def test_kopf_settings_are_pinned():
    settings = kopf.OperatorSettings()
    configure(settings)
    assert settings.persistence.finalizer == FINALIZER == "lamina.dev/kopf-finalizer"
    assert settings.persistence.progress_storage.prefix == "lamina.dev"
    assert settings.persistence.diffbase_storage.prefix == "lamina.dev"
    # kopf's current key format only: no legacy second copy of every progress annotation.
    assert settings.persistence.progress_storage.v1 is False
    assert settings.persistence.diffbase_storage.v1 is False
    assert settings.peering.name == "lamina-operator"
    # Only explicit Events are posted: a logged line never becomes a second Event.
    assert settings.posting.enabled and settings.posting.loggers is False
    assert settings.posting.reporting_component == "lamina-operator"
    assert settings.networking.request_timeout == 60 and settings.watching.server_timeout == 600


def test_handlers_are_registered():
    from lamina_operator import main  # noqa: F401

    registry = kopf.get_default_registry()
    resources = {
        (h.selector.group, h.selector.plural or h.selector.any_name)
        for h in registry._changing.get_all_handlers() + registry._watching.get_all_handlers()
    }
    assert {("lamina.dev", "servingdeployments"), ("lamina.dev", "autoscalingpolicies"),
            ("apps", "deployments")} <= resources  # fmt: skip


def _plural(kind: str) -> str:
    return kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + "s"


def _allowed(group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
        for r in rbac.all_rules()
    )


def test_rbac_covers_every_child_the_builders_make(gpu_spec, minimal_spec):
    owner = Owner("x", "ns", "uid")
    for spec in (gpu_spec, minimal_spec):
        for want in build_children(
            owner, ServingDeploymentSpec.model_validate(spec), BuildContext()
        ):
            api_version, kind, _ = want.key
            group = api_version.rpartition("/")[0]
            resource = _plural(kind)
            # The password Secret is created once and never read back: create (and delete).
            verbs = ("create", "delete") if want.create_only else ("get", "create", "patch",
                                                                    "list", "delete")  # fmt: skip
            for verb in verbs:
                assert _allowed(group, resource, verb), (group, resource, verb)
    for api_version, kind in CHILD_KINDS:  # pruning lists and deletes these
        assert _allowed(api_version.rpartition("/")[0], _plural(kind), "delete")
    assert _allowed("lamina.dev", "servingdeployments/status", "patch")
    assert _allowed("", "events", "create")
    assert _allowed("apps", "deployments", "watch")


def test_the_cluster_role_cannot_read_any_secret():
    """With --all-namespaces the ClusterRole may create and delete Secrets (the managed Redis
    password) everywhere, but never read one: get comes only per namespace."""
    secret_verbs = {
        verb
        for rule in rbac.cluster_role_rules()
        if "" in rule["apiGroups"] and "secrets" in rule["resources"]
        for verb in rule["verbs"]
    }
    assert secret_verbs == {"create", "delete"}
    assert rbac.SECRET_READ_RULES == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    ]
