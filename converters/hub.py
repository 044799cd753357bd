"""Models by name: `org/name` from the Hugging Face Hub, `modelscope:org/name` from ModelScope.

A MODEL argument that is not an existing path and reads `org/name` is fetched with huggingface_hub's
`snapshot_download` into the standard cache (HF_HOME / HF_HUB_CACHE, its own progress bars, resumable,
HF_ENDPOINT and HF_TOKEN honoured) and the verb gets the snapshot folder. Only what the verb needs is
fetched: config and tokenizer files, and one weight format (safetensors before `.bin`, only the shards
the index names); never `*.py`. `inspect` fetches no weights at all.

Invariants:
- The snapshot folder is complete or the verb stops: huggingface_hub writes each file as
  `blobs/<hash>.incomplete` and links it into `snapshots/<commit>/` only once whole, so a failed
  download (network, full disk) never looks like a model; a rerun resumes the `.incomplete` blob.
- Offline (HF_HUB_OFFLINE=1, or the endpoint unreachable) the cached snapshot is used if it holds
  every file the verb needs; otherwise one line says what is missing.
- Every hub failure is one UserError line: unreachable endpoint, unknown repo, unknown revision,
  gated or unauthorised, disk full.
"""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from .checkpoint import TOKENIZER_FILES
from .errors import UsageError, UserError

# `org/name`, as the Hub spells repo ids (letters, digits, '-', '_', '.'; no '..' or leading '.')
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
MODELSCOPE = "modelscope:"
CONFIG_FILES = ("config.json", "chat_template.jinja", *TOKENIZER_FILES)
WEIGHT_FORMATS = (  # in order of preference: (index, single file, shard pattern)
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def is_hub_name(arg: str | os.PathLike) -> bool:
    """True for `org/name` or `modelscope:org/name` that does not name an existing path."""
    text = str(arg)
    if Path(text).exists():
        return False
    return bool(REPO_ID.fullmatch(text.removeprefix(MODELSCOPE)) and ".." not in text)


def resolve(arg: str | os.PathLike, revision: str | None = None, weights: bool = True) -> Path:
    """The local folder for a MODEL argument: the path itself, or a downloaded (cached) snapshot.

    weights=False fetches config and tokenizer files only (for `inspect`)."""
    if not is_hub_name(arg):
        return Path(arg)
    text = str(arg)
    if text.startswith(MODELSCOPE):
        return _modelscope(text.removeprefix(MODELSCOPE), revision, weights)
    return _huggingface(text, revision, weights)


# --- Hugging Face --------------------------------------------------------------------------------------
def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _wanted(files: list[str], weights: bool, read_index) -> list[str]:
    """The repo files a verb needs: configs, tokenizer, and one weight format (top-level files only)."""
    present = set(files)
    wanted = [f for f in CONFIG_FILES if f in present]
    if "config.json" not in present:
        raise UserError("no config.json in the repository (not a transformers model?)")
    if not weights:  # an index is metadata (inspect reads the weights' total size from it)
        return wanted + [index for index, _ in WEIGHT_FORMATS if index in present][:1]
    for index, single in WEIGHT_FORMATS:
        if index in present:
            shards = sorted(set(read_index(index).values()))
            missing = [s for s in shards if s not in present or "/" in s]
            if missing:
                raise UserError(f"{index} names shards the repository lacks: {', '.join(missing[:3])}")
            return wanted + [index, *shards]
        if single in present:
            return wanted + [single]
    raise UserError("no model.safetensors, pytorch_model.bin or an index of either in the repository "
                    "(GGUF-only repositories: download the .gguf file and pass its path)")


def _weight_map(folder: Path, index: str) -> dict:
    try:
        weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{folder / index}: not a valid index ({exc})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{folder / index}: has no weight_map")
    return weight_map


def _hub_error(repo: str, revision: str | None, exc: Exception) -> UserError:
    """One line for anything huggingface_hub raises."""
    from huggingface_hub import errors

    endpoint = _endpoint()
    if isinstance(exc, errors.GatedRepoError):
        return UserError(f"{repo}: gated on {endpoint}: accept its licence on the model page, then set "
                         "HF_TOKEN to a token of that account")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return UserError(f"{repo}: no such local folder, and no such model on {endpoint} "
                         "(or it is private: set HF_TOKEN)", code=2)
    if isinstance(exc, errors.RevisionNotFoundError):
        return UserError(f"{repo}: no revision {revision!r} on {endpoint}", code=2)
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return UserError(f"{repo}: {endpoint} refused access (HTTP {status}): check HF_TOKEN")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return UserError(f"{repo}: {endpoint} answered an error ({first})")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        from huggingface_hub import constants

        return UserError(f"{repo}: disk full while downloading into {constants.HF_HUB_CACHE} ({exc.strerror}); "
                         "free space (or set HF_HOME to a larger disk) and run again: files already fetched are kept")
    return UserError(f"{repo}: {endpoint} not reachable ({type(exc).__name__}): pass a local folder, "
                     "or set HF_ENDPOINT")


def _cached(repo: str, revision: str | None, weights: bool, reason: str) -> Path:
    """The cached snapshot, checked to hold what the verb needs; else one line saying why not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # the library checks the config files it has listed; the weights are checked below
        folder = Path(snapshot_download(repo, revision=revision, local_files_only=True,
                                        allow_patterns=list(CONFIG_FILES)))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        where = f" at revision {revision!r}" if revision else ""
        advice = "unset it to download" if "HF_HUB_OFFLINE" in reason else "set HF_ENDPOINT"
        raise UserError(f"{repo}{where}: no such local folder, not in the Hugging Face cache, and {reason}: "
                        f"pass a local folder, or {advice}") from None
    files = [p.name for p in folder.iterdir() if p.exists()]  # a dangling link is not a file
    try:
        _wanted(files, weights, lambda index: _weight_map(folder, index))
    except UserError as exc:
        raise UserError(f"{repo}: the cached snapshot is incomplete ({exc}) and {reason}: "
                        "run again online to finish the download") from None
    return folder


def _huggingface(repo: str, revision: str | None, weights: bool) -> Path:
    import httpx
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    if _offline():
        return _cached(repo, revision, weights, "HF_HUB_OFFLINE is set")
    try:
        endpoint = _endpoint()  # HF_ENDPOINT, passed to every call so all requests go to one place
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision)
        files = [s.rfilename for s in info.siblings or []]
        commit = info.sha or revision

        def read_index(index: str) -> dict:
            return _weight_map(Path(hf_hub_download(repo, index, revision=commit, endpoint=endpoint)).parent, index)

        try:
            wanted = _wanted(files, weights, read_index)
        except UserError as exc:
            raise UserError(f"{repo}: {exc}") from None
        # the branch or tag name (not the commit) so that refs/<revision> is written for offline reuse
        return Path(snapshot_download(repo, revision=revision, allow_patterns=wanted, endpoint=endpoint))
    except UserError:
        raise
    except ValueError as exc:  # huggingface_hub's HFValidationError: a name the Hub cannot hold
        raise UsageError(f"{repo}: no such local folder, nor a valid Hugging Face repository id ({exc})") from None
    except (OSError, httpx.HTTPError) as exc:  # HfHubHTTPError is an OSError too; anything else is a bug
        if _unreachable(exc):
            return _cached(repo, revision, weights, f"{_endpoint()} is not reachable")
        raise _hub_error(repo, revision, exc) from None


def _unreachable(exc: Exception) -> bool:
    """Neither an answer from the Hub nor a local disk error: the network (connection, DNS, timeout)."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    disk = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    network = isinstance(exc, (OSError, httpx.TransportError))  # OSError: also the library's cache fallback
    return network and not disk and not isinstance(exc, HfHubHTTPError)


def repo_name(folder: Path) -> str | None:
    """`name` for a snapshot folder of the Hugging Face cache (…/models--org--name/snapshots/<commit>)."""
    folder = Path(folder)
    storage = folder.parent.parent.name
    if folder.parent.name == "snapshots" and storage.startswith("models--"):
        return storage.split("--")[-1]
    return None


# --- ModelScope ----------------------------------------------------------------------------------------
def _modelscope(repo: str, revision: str | None, weights: bool) -> Path:
    """ModelScope ids through the `modelscope` package, with the same file selection."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise UsageError(f"{MODELSCOPE}{repo}: ModelScope needs the modelscope package "
                         "(pip install 'minicpm[modelscope]')") from None
    patterns = list(CONFIG_FILES)
    if weights:
        patterns += ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    import logging

    noisy = [logging.getLogger(n) for n in ("modelscope", "modelscope_hub")]
    levels = [log.level for log in noisy]
    for log in noisy:  # its retry warnings would break the one-line error
        log.setLevel(logging.ERROR)
    try:
        folder = Path(snapshot_download(repo, revision=revision or "master", allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - modelscope raises requests' and its own error types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise UserError(f"{MODELSCOPE}{repo}: disk full while downloading ({exc.strerror})") from None
        if "404" in text or "not exist" in text.lower() or "not found" in text.lower():
            raise UserError(f"{MODELSCOPE}{repo}: no such model (or revision) on ModelScope", code=2) from None
        raise UserError(f"{MODELSCOPE}{repo}: ModelScope not reachable ({type(exc).__name__}): pass a local "
                        "folder, or set MODELSCOPE_ENDPOINT") from None
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)
    if weights and not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise UserError(f"{MODELSCOPE}{repo}: no safetensors weights in the download (a .bin-only model: "
                        "download it with modelscope yourself and pass the folder)")
    return folder
