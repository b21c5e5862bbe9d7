"""The fetch stage, first in the DAG: the external weights the scale needs (coda/external_inputs.py says which,
from where, and with which checksum), downloaded once and verified, so nothing downloads mid-training.

For each external input that has a source:

- missing, with network: downloaded into the standard caches (the Hugging Face cache through
  ``hf_hub_download``, torch hub's ``checkpoints/`` through ``torch.hub.download_url_to_file``),
  checked, and, where the pipeline reads a path (``weights/...``), linked there (a symbolic link to the
  cache's file, or a folder of them);
- present: checked again, from the local files alone (a hub file against the checksum the hub
  published for it, which names its blob in the cache; the Inception file against the sha256 pinned
  in coda/external_inputs.py);
- missing, offline (``HF_HUB_OFFLINE=1``): nothing is downloaded, and the run is refused with the
  list of everything missing.

A file you put where the pipeline reads it yourself (a regular file or folder, not fetch's link) is
yours: recorded with its sha256, never replaced. A checksum mismatch stops with one line naming the
file; the file is not used (a download is removed before it reaches its place, and no record is
written). The record, ``work/<scale>/fetched.json``, says what, where, from which revision and with
which sha256; the vae and reference stages, the first to read the weights, depend on it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .external_inputs import (ExternalInput, HubFiles, MissingInputsError, UrlFile, check_external_inputs,
                              external_inputs, offline)
from .files import UnreadableFileError, file_sha256, write_json

HUB_CHECK = {64: "sha256 published by the hub", 40: "git hash published by the hub"}
PINNED_CHECK = "sha256 pinned in coda/external_inputs.py"
OWN_FILE = "none: your own file"


class ChecksumError(UnreadableFileError):
    """A fetched or cached file does not match its published or pinned checksum."""


class DownloadError(OSError):
    """A download could not be made (no network, a gated or missing repository)."""


def fetch(params: dict, out: str | Path) -> dict:
    """Fetch and check every external input of this run with a source; write the record to ``out`` and
    return it.

    Raises MissingInputsError listing what is still missing (offline, or a download that failed),
    ChecksumError on the first file that does not match its checksum."""
    entries, failed = [], []
    for item in external_inputs(params):
        if item.source is None:
            continue  # datasets: checked, never fetched
        try:
            entries += _fetch_url(item, params) if isinstance(item.source, UrlFile) else _fetch_hub(item, params)
        except DownloadError as error:
            failed.append(f"  - {item.location}: {item.what}; {error}")
    if failed:
        raise MissingInputsError(f"{len(failed)} external input(s) of scale {params['scale']!r} could not be "
                                 "fetched (nothing was recorded):\n" + "\n".join(failed))
    check_external_inputs(params, present=True)  # offline, a missing one is refused here, with what to do
    content = {"scale": params["scale"], "inputs": entries}
    write_json(out, content)
    for entry in entries:
        print(f"{entry['where']}: {entry['sha256'][:12]} ({entry['check']})")
    return content


def _entry(item: ExternalInput, where: str, origin: str, path: Path, check: str, digest: str | None = None) -> dict:
    return {"what": item.what, "where": where, "from": origin, "sha256": digest or file_sha256(path),
            "bytes": path.stat().st_size, "check": check}


# -- hub files --------------------------------------------------------------------------------------
def _fetch_hub(item: ExternalInput, params: dict) -> list[dict]:
    source: HubFiles = item.source
    path = None if item.in_cache else Path(item.location).expanduser()
    if path is not None and path.exists() and not _is_link(path):
        return _own(item, path)
    cached = source.cached_paths()
    if None in cached:
        if offline():
            return []  # refused after the loop, with the offline message
        cached = [found or _download_hub(source, name, item) for found, name in zip(cached, source.files)]
    entries = [_check_hub(item, Path(found), name, params["scale"]) for found, name in zip(cached, source.files)]
    if path is not None:
        _link(path, [Path(found) for found in cached])
        for entry, found in zip(entries, cached):
            entry["where"] = str(Path(item.location) / Path(found).name) if len(cached) > 1 else item.location
    return entries


def _download_hub(source: HubFiles, name: str, item: ExternalInput) -> str:
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        return huggingface_hub.hf_hub_download(source.repo_id, name, revision=source.revision)
    except GatedRepoError as error:
        raise DownloadError(f"{source.repo_id} is gated: accept its licence on https://huggingface.co/"
                            f"{source.repo_id}, log in (`hf auth login`, or set HF_TOKEN) and run `coda "
                            f"fetch` again ({_first_line(error)})") from error
    except (RepositoryNotFoundError, HfHubHTTPError) as error:
        raise DownloadError(f"{source.repo_id} has no {name} at revision {source.revision} "
                            f"({_first_line(error)}); or {item.how}") from error
    except OSError as error:  # no network: huggingface_hub raises LocalEntryNotFoundError or a connection error
        raise DownloadError(f"could not download {name} from {source.repo_id} ({_first_line(error)}): run "
                            f"`coda fetch` where there is network; or {item.how}") from error


def _check_hub(item: ExternalInput, cached: Path, name: str, scale: str) -> dict:
    """A cached hub file against the hub's checksum, which huggingface_hub gave its blob as name."""
    blob = cached.resolve()
    expected, digest = blob.name, file_sha256(blob)
    origin = f"hf://{item.source.repo_id}@{_commit(cached)}/{name}"
    where = f"HF cache: {item.source.repo_id}/{name}"
    if not re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{40}", expected):
        return _entry(item, where, origin, blob, "none: the cache holds no checksum (no symbolic links)", digest)
    from huggingface_hub.utils.sha import git_hash

    actual = digest if len(expected) == 64 else git_hash(blob.read_bytes())
    if actual != expected:
        raise ChecksumError(f"{blob} ({name} of {item.source.repo_id}) does not match the {HUB_CHECK[len(expected)]} "
                            f"({actual[:12]} instead of {expected[:12]}), so it is not used: delete it and run "
                            f"`coda fetch --scale {scale}` again")
    return _entry(item, where, origin, blob, HUB_CHECK[len(expected)], digest)


def _commit(cached: Path) -> str:
    parts = cached.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else "unknown"


def _is_link(path: Path) -> bool:
    """fetch's own: a symbolic link, or a folder of nothing else (empty too); a file you put there is not."""
    if path.is_symlink():
        return True
    return path.is_dir() and all(child.is_symlink() for child in path.iterdir())


def _link(path: Path, targets: list[Path]) -> None:
    """``path`` -> the one cached file, or a folder ``path`` of links to several, by their names."""
    if len(targets) == 1:
        links = [(path, targets[0])]
    else:
        if path.is_symlink():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        links = [(path / target.name, target) for target in targets]
    for link, target in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.absolute())


def _own(item: ExternalInput, path: Path) -> list[dict]:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [_entry(item, str(Path(item.location) / f.name) if path.is_dir() else item.location, OWN_FILE, f, OWN_FILE)
            for f in files]


# -- a file at a URL --------------------------------------------------------------------------------
def _fetch_url(item: ExternalInput, params: dict) -> list[dict]:
    import torch

    source: UrlFile = item.source
    path = Path(item.location).expanduser()
    standard = path.parent == Path(torch.hub.get_dir()) / "checkpoints"  # torch hub's cache, by its release name
    where = f"torch hub cache: checkpoints/{path.name}" if standard else item.location
    if path.exists():
        digest = file_sha256(path)
        if digest == source.sha256:
            return [_entry(item, where, source.url if standard else OWN_FILE, path, PINNED_CHECK, digest)]
        if not standard:
            return [_entry(item, where, OWN_FILE, path, f"{OWN_FILE} (not the published one)", digest)]
        raise ChecksumError(f"{path} does not match the {PINNED_CHECK} ({digest[:12]} instead of "
                            f"{source.sha256[:12]}), so it is not used: delete it and run `coda fetch --scale "
                            f"{params['scale']}` again")
    if offline():
        return []
    _download_url(source, path, params["scale"])
    return [_entry(item, where, source.url, path, PINNED_CHECK, source.sha256)]


def _download_url(source: UrlFile, path: Path, scale: str) -> None:
    """Download to ``<path>.partial``, check, then move into place: a bad download never reaches ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.hub.download_url_to_file(source.url, str(partial))
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors
        raise DownloadError(f"could not download {source.url} ({_first_line(error)}): run `coda fetch` where "
                            "there is network, or put the file there yourself") from error
    digest = file_sha256(partial)
    if digest != source.sha256:
        partial.unlink()
        raise ChecksumError(f"{source.url} sent a file whose sha256 is {digest[:12]}, not the {PINNED_CHECK} "
                            f"({source.sha256[:12]}); it was deleted and {path} not written: run `coda fetch "
                            f"--scale {scale}` again, or check your network's proxy")
    os.replace(partial, path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
