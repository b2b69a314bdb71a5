"""Credentials the model fetcher (`lamina fetch-model`, each pod's init container) reads a
checkpoint with: a Hugging Face token, or S3 keys and an endpoint. Only Secret references: a
token never sits in the ServingDeployment."""

from __future__ import annotations

from pydantic import Field

from .common import DNS_SUBDOMAIN, KubeModel


class HfTokenSecretRef(KubeModel):
    """The key of a Secret holding a Hugging Face read token (given to the fetcher as HF_TOKEN)."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the Secret.")
    key: str = Field(
        default="token",
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret's data holding the token.",
    )


class S3Access(KubeModel):
    """Where an s3:// source is read from and with which keys."""

    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        max_length=2048,
        description=(
            "URL of an S3-compatible store (MinIO, Ceph, R2, ...), e.g. http://minio.storage:9000; "
            "absent: AWS S3."
        ),
    )
    secret_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description=(
            "Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; absent: no keys "
            "are given (a public bucket, or credentials from the node or the pools' env)."
        ),
    )
