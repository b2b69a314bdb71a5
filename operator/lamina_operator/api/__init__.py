"""The lamina.dev/v1alpha1 API: pydantic models of ServingDeployment and AutoscalingPolicy."""

from .autoscaling import AutoscalingPolicySpec
from .common import KubeModel
from .serving import ServingDeploymentSpec
from .status import AutoscalingPolicyStatus, Condition, PoolStatus, ServingDeploymentStatus

__all__ = [
    "AutoscalingPolicySpec",
    "AutoscalingPolicyStatus",
    "Condition",
    "KubeModel",
    "PoolStatus",
    "ServingDeploymentSpec",
    "ServingDeploymentStatus",
]
