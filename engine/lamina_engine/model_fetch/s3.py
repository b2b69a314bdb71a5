"""s3://bucket/prefix -> a folder, with boto3 (any S3-compatible store).

Credentials and endpoint come from the environment as boto3 reads them: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION. Resume: a file whose
size and recorded ETag match the object's is skipped; a partial `<file>.part` continues with a
ranged GET pinned to the object's ETag (If-Match), so a replaced object is never spliced onto an
old one. Every file's size is checked, and its MD5 where the ETag is one (single-part uploads;
a multipart ETag is a hash of part hashes and is checked by size only).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from .errors import FetchError
from .source import ModelSource

RECORD = ".lamina-fetch/s3-etags.json"  # key -> ETag of each finished file, for resume
CHUNK = 8 << 20  # bytes per read


def fetch_s3(source: ModelSource, dest: Path) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    client = boto3.client("s3", region_name=region)
    where = f"s3://{source.location}/{source.prefix}"
    endpoint = client.meta.endpoint_url
    try:
        objects = _list(client, source)
    except ClientError as exc:
        raise FetchError(_explain(exc, source, endpoint)) from exc
    except BotoCoreError as exc:
        raise FetchError(f"cannot list {where} at {endpoint}: {exc}") from exc
    if not objects:
        raise FetchError(
            f"no objects under {where} at {endpoint}: check the prefix (the folder that holds "
            "config.json)"
        )
    record_path = dest / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    fetched = fetched_bytes = 0
    for key, size, etag in objects:
        target = dest / _relative(key, source.prefix)
        if target.is_file() and target.stat().st_size == size and record.get(key) == etag:
            continue
        try:
            fetched_bytes += _download(client, source.location, key, size, etag, target)
        except ClientError as exc:
            raise FetchError(_explain(exc, source, endpoint, key)) from exc
        except BotoCoreError as exc:  # a connection cut mid-body, a read timeout
            have = _part(target).stat().st_size if _part(target).exists() else 0
            raise FetchError(
                f"s3://{source.location}/{key} arrived truncated ({have} of {size} bytes: {exc}); "
                "the partial copy is kept, run again to resume"
            ) from exc
        record[key] = etag
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=1))
        fetched += 1
    return (
        f"{where}: {len(objects)} files, {fetched} downloaded ({fetched_bytes} bytes), "
        f"{len(objects) - fetched} already complete"
    )


def _list(client, source: ModelSource) -> list[tuple[str, int, str]]:
    """(key, size, ETag) of every object under the prefix, folder markers left out."""
    out = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=source.location, Prefix=source.prefix
    )
    for page in pages:
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                out.append((obj["Key"], obj["Size"], obj["ETag"].strip('"')))
    return out


def _relative(key: str, prefix: str) -> PurePosixPath:
    rel = PurePosixPath(key[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts:
        raise FetchError(f"object key {key!r} would land outside the model folder; refusing it")
    return rel


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _download(client, bucket: str, key: str, size: int, etag: str, target: Path) -> int:
    """Fetch one object into `target` via `<target>.part`; returns the bytes transferred."""
    from botocore.exceptions import ClientError

    part = _part(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # left by a different object: start again
        part.unlink()
        have = 0
    got = 0
    if have < size:
        args = {"Bucket": bucket, "Key": key, "IfMatch": f'"{etag}"'}
        if have:
            args["Range"] = f"bytes={have}-"
        try:
            body = client.get_object(**args)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                part.unlink(missing_ok=True)  # the object was replaced since the partial copy
            raise
        with open(part, "ab") as f:
            for chunk in body.iter_chunks(CHUNK):
                f.write(chunk)
                got += len(chunk)
    written = part.stat().st_size
    if written != size:
        raise FetchError(
            f"s3://{bucket}/{key} arrived truncated: {written} of {size} bytes; the partial copy "
            "is kept, run again to resume"
        )
    if "-" not in etag and _md5(part) != etag:
        part.unlink()
        raise FetchError(
            f"s3://{bucket}/{key} does not match its ETag (MD5 {etag}): the download was corrupt "
            "and is deleted; run again"
        )
    os.replace(part, target)
    return got


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _explain(exc, source: ModelSource, endpoint: str, key: str | None = None) -> str:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    what = f"s3://{source.location}/{key if key else source.prefix}"
    if code == "NoSuchBucket":
        return f"bucket {source.location!r} does not exist at {endpoint}: check the source"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 401:
        return (
            f"{endpoint} refused the credentials ({code}): check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the Secret that s3.secretName names"
        )
    if code == "AccessDenied" or status == 403:
        return f"the credentials may not read {what} at {endpoint} (403 AccessDenied)"
    if code in ("PreconditionFailed", "412"):
        return f"{what} changed while it was fetched; run again to fetch the new object"
    return f"reading {what} at {endpoint} failed: {code or status}: {exc}"
