"""hf://org/name[@revision] -> a folder, with huggingface_hub doing the protocol.

huggingface_hub reads HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE from the environment itself.
snapshot_download into `local_dir` resumes: finished files are skipped by their recorded ETag,
a partial one continues from its `.incomplete` bytes, and each file's size is checked against
the Hub's. After it, every file is checked against the Hub's hashes (sha256 for LFS files, the
git blob id for the rest); one that fails is fetched once more (a copy corrupted on disk since
an earlier run), and fails the fetch if it fails again. The revision is pinned to a commit first so a branch that moves
mid-fetch cannot mix two commits.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import FetchError
from .source import ModelSource

_CONSISTENCY = re.compile(r"should be of size (\d+) but has size (\d+) \((.*?)\)")


def fetch_hf(source: ModelSource, dest: Path) -> str:
    """Download the repo at `source.revision` into `dest`; returns a one-line summary."""
    from huggingface_hub import HfApi, constants, snapshot_download

    repo, endpoint = source.location, constants.ENDPOINT
    if constants.is_offline_mode():
        try:
            snapshot_download(repo, revision=source.revision, local_dir=dest)
        except FileNotFoundError as exc:
            raise FetchError(
                f"HF_HUB_OFFLINE is set and {dest} holds no copy of {repo}: unset HF_HUB_OFFLINE "
                f"to download it, or put the checkpoint in {dest} first"
            ) from exc
        return f"HF_HUB_OFFLINE: using the copy of {repo} already in {dest} (not verified)"
    api = HfApi()
    try:
        commit = api.repo_info(repo, revision=source.revision).sha
        snapshot_download(repo, revision=commit, local_dir=dest)
        bad = _unverified(api, repo, commit, dest)
        if bad:  # corrupted on disk since an earlier run: fetch those files once more
            for path in bad:
                (dest / path).unlink(missing_ok=True)
            snapshot_download(repo, revision=commit, local_dir=dest)
            bad = _unverified(api, repo, commit, dest)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the pod status
        raise FetchError(_explain(exc, source, endpoint, dest)) from exc
    if bad:
        raise FetchError(
            f"{len(bad)} file(s) of {repo}@{commit[:12]} do not match the Hub's hashes after "
            f"downloading them twice ({', '.join(bad[:3])}): something between {endpoint} and "
            "this pod alters them (a proxy or mirror); fix that and run again"
        )
    return f"{repo}@{commit[:12]}: files verified against the Hub's hashes"


def _unverified(api, repo: str, commit: str, dest: Path) -> list[str]:
    """Files of the commit missing from `dest` or whose sha256 / git blob id differs."""
    check = api.verify_repo_checksums(repo, revision=commit, local_dir=dest)
    return sorted(check.missing_paths + [m["path"] for m in check.mismatches])


def _explain(exc: Exception, source: ModelSource, endpoint: str, dest: Path) -> str:
    """The user's one line for a huggingface_hub failure."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import get_token

    repo, token = source.location, get_token()
    has_token = "HF_TOKEN is set" if token else "HF_TOKEN is not set"
    if isinstance(exc, RevisionNotFoundError):
        return (
            f"revision {source.revision!r} not found in {repo} on {endpoint}: give an existing "
            "branch, tag or commit after @"
        )
    if isinstance(exc, GatedRepoError):
        return (
            f"{repo} is gated on {endpoint}: accept its terms on the Hub with the account whose "
            f"token is in HF_TOKEN ({has_token})"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"repository {repo} not found on {endpoint}, or it is private and the token cannot "
            f"read it ({has_token}): check the name, or give a token (hfTokenSecret)"
        )
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return (
                f"{endpoint} refused the token in HF_TOKEN (401 invalid credentials): put a valid "
                "read token in the Secret that hfTokenSecret names"
            )
        if status == 403:
            return f"the token in HF_TOKEN may not read {repo} on {endpoint} (403 forbidden)"
        return f"{endpoint} answered {status} while fetching {repo}: {str(exc).splitlines()[0]}"
    m = _CONSISTENCY.search(str(exc))
    if m:
        want, got, name = m.groups()
        return (
            f"file {name} of {repo} arrived truncated: {got} of {want} bytes; the partial copy in "
            f"{dest} is kept, run again to resume"
        )
    if isinstance(exc, LocalEntryNotFoundError):
        return f"cannot reach {endpoint} to fetch {repo} (network or Hub down): {exc.__cause__}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"fetching {repo} from {endpoint} failed: {type(exc).__name__}: {first}"
