"""Leader election through a kopf peering object: settle at startup what happens without one.

kopf in "mandatory peering" mode waits for its peering object before it handles anything, and
says nothing while it waits: `lamina-operator run --all-namespaces` with no ClusterKopfPeering
reconciled nothing and logged nothing. So the object is looked up once at startup:

- found: peering is made mandatory (a new replica waits for its peers before acting);
- not found, `--peering NAME` given: the user asked for leader election, so kopf keeps waiting,
  and an ERROR line says what is missing and the command that creates it;
- not found, no flag: what a user running one operator expects, it runs standalone, with a
  WARNING that a second replica needs the peering object (the chart creates it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import kopf

# (namespace or None for the ClusterKopfPeering, name) -> exists? None when it cannot be told.
Lookup = Callable[[str | None, str], bool | None]


def manifest(name: str, namespace: str | None) -> str:
    """The YAML that creates the peering object (what `kubectl apply -f -` needs)."""
    if namespace is None:
        return f"apiVersion: kopf.dev/v1\nkind: ClusterKopfPeering\nmetadata:\n  name: {name}\n"
    return (
        f"apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata:\n  name: {name}\n"
        f"  namespace: {namespace}\n"
    )


def _describe(name: str, namespace: str | None) -> str:
    return f"ClusterKopfPeering {name!r}" if namespace is None else (
        f"KopfPeering {name!r} in namespace {namespace!r}"
    )  # fmt: skip


def settle_peering(
    settings: kopf.OperatorSettings,
    explicit: bool,
    namespaces: Sequence[str],
    exists: Lookup,
    logger: logging.Logger,
) -> None:
    """Adjust `settings.peering` (before kopf's watchers start) and say what is missing."""
    peering = settings.peering
    if peering.standalone:
        return
    if not peering.clusterwide and any(ch in ns for ns in namespaces for ch in "*?[!"):
        return  # namespaces matched by a pattern are not known yet: kopf's own rules apply
    targets: list[str | None] = [None] if peering.clusterwide else list(namespaces)
    found = {target: exists(target, peering.name) for target in targets}
    if None in found.values():
        return  # not allowed to look (RBAC): leave kopf's behaviour, which the user chose
    missing = [target for target, ok in found.items() if not ok]
    if not missing:
        peering.mandatory = True
        return
    what = " and ".join(_describe(peering.name, target) for target in missing)
    create = "".join(
        f"\n  kubectl apply -f - <<'EOF'\n{manifest(peering.name, target)}EOF" for target in missing
    )
    if explicit:
        logger.error(
            f"{what} does not exist (or its CRD is not installed: `lamina-operator crds` prints "
            f"it), and --peering {peering.name} asks for leader election through it: nothing is "
            f"reconciled until it exists. Create it:{create}\nor run one replica with "
            "--standalone."
        )
        return
    peering.standalone = True
    logger.warning(
        f"{what} does not exist: running standalone, without leader election, so run exactly "
        f"one replica. For several replicas (failover) create it and restart with --peering "
        f"{peering.name}:{create}"
    )
