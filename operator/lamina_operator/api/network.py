"""Who may reach a ServingDeployment's pods: the NetworkPolicies the operator writes.

Each pool gets an Ingress NetworkPolicy (builders/policies.py): the router takes client
traffic, prefill and decode pods accept only the router and each other, the managed Redis only
the prefill and decode pods. A peer here has the fields of a core NetworkPolicyPeer.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from .common import KubeModel


class LabelSelector(KubeModel):
    """A Kubernetes label selector (matchLabels and/or matchExpressions)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels the object must carry."
    )
    match_expressions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="core/v1 LabelSelectorRequirements ({key, operator, values}).",
        json_schema_extra={
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    )


class IPBlock(KubeModel):
    """A CIDR (e.g. a load balancer's or an office's range), minus some sub-ranges."""

    cidr: str = Field(min_length=1, description="e.g. 10.0.0.0/8.")
    except_: list[str] = Field(
        default_factory=list, alias="except", description="CIDRs inside cidr to leave out."
    )


class NetworkPeer(KubeModel):
    """Where allowed traffic may come from (a core/v1 NetworkPolicyPeer)."""

    pod_selector: LabelSelector | None = Field(
        default=None, description="Pods (in this namespace unless namespaceSelector is set)."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces; with podSelector: those pods in them."
    )
    ip_block: IPBlock | None = Field(default=None, description="An address range.")

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError(
                "a network peer is either ipBlock or podSelector/namespaceSelector, not both: "
                "write them as two entries of the list"
            )
        if self.ip_block is None and not selectors:
            raise ValueError(
                "an empty network peer would match nothing: give podSelector, "
                "namespaceSelector or ipBlock"
            )
        return self

    def manifest(self) -> dict[str, Any]:
        """The core/v1 NetworkPolicyPeer (an empty selector `{}` stays: it matches all)."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)


class NetworkPolicySpec(KubeModel):
    """Ingress rules for this deployment's pods (enforced where the CNI supports them)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Write one Ingress NetworkPolicy per pool: the router takes client traffic on port "
            "8000, prefill and decode pods accept only the router there; the internal port "
            "8001 of every pod admits only this deployment's pods and the operator's; the "
            "managed Redis only the prefill and decode pods (port 6379). Egress is not "
            "restricted."
        ),
    )
    clients_from: list[NetworkPeer] = Field(
        default_factory=list,
        description=(
            "Who may call the router (port 8000). Empty: anyone who can reach its Service (it "
            "is the endpoint; a LoadBalancer's traffic often arrives from node addresses)."
        ),
    )
    monitoring_from: list[NetworkPeer] = Field(
        default_factory=list,
        description=(
            "Who else may reach prefill and decode pods (and the router, when clientsFrom "
            "restricts it) on their public port 8000, e.g. Prometheus scraping /metrics: [{namespaceSelector: "
            "{matchLabels: {kubernetes.io/metadata.name: monitoring}}}]. Empty: only the router "
            "and the engines (metrics are not scraped)."
        ),
    )
