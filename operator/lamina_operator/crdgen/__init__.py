"""CRD generation: pydantic models -> structural apiextensions.k8s.io/v1 schemas -> YAML."""

from .render import render_all, to_yaml
from .structural import check_structural, to_structural

__all__ = ["check_structural", "render_all", "to_structural", "to_yaml"]
