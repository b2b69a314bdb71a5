"""Names shared by the API models, the builders, the reconciler and the CLI."""

GROUP = "lamina.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SERVING_KIND = "ServingDeployment"
SERVING_PLURAL = "servingdeployments"
POLICY_KIND = "AutoscalingPolicy"
POLICY_PLURAL = "autoscalingpolicies"

# kopf persistence is pinned to our own group so two operators never fight over annotations.
FINALIZER = f"{GROUP}/kopf-finalizer"
PROGRESS_PREFIX = GROUP
PEERING_NAME = "lamina-operator"

# Labels every child carries. The selector labels (DEPLOYMENT_LABEL + ROLE_LABEL) are immutable
# on Deployments, so they never include anything that can change with the spec.
DEPLOYMENT_LABEL = f"{GROUP}/deployment"
ROLE_LABEL = f"{GROUP}/role"
# On the operator's pods (the chart sets it): engine NetworkPolicies admit them to /metrics.
OPERATOR_POD_LABEL = f"{GROUP}/operator"
# The operator pod's namespace (downward API in the chart): NetworkPolicies admit it from there.
OPERATOR_NAMESPACE_ENV = "LAMINA_OPERATOR_NAMESPACE"
MANAGED_BY = "lamina-operator"
PART_OF = "lamina"

# Annotations the operator writes on children.
LAST_APPLIED_ANNOTATION = f"{GROUP}/last-applied"  # canonical JSON of what we last wrote
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"  # on pod templates: rolls pods on config change

ROLES = ("prefill", "decode", "router")
ENGINE_PORT = 8000  # public: the OpenAI API, /health, /metrics
INTERNAL_PORT = 8001  # pods' internal and admin endpoints (internal key required)
REDIS_PORT = 6379
# Service names are DNS-1035 labels (<= 63 chars); the longest suffix is "-prefill" (8).
MAX_NAME_LENGTH = 55
DEFAULT_ENGINE_IMAGE = "ghcr.io/lamina-project/lamina-engine:0.1.0"
DEFAULT_REDIS_IMAGE = "redis:7.2-alpine"
# The engine image's non-root user; the Dockerfile must create it with this uid/gid.
ENGINE_UID = 1000
REDIS_UID = 999  # the `redis` user of the official redis images
