"""Hugging Face Hub references (``org/name``, ``org/name@revision``, ``org/name:file``) resolved to local files.

Everything goes through :mod:`huggingface_hub` (``hf_hub_download``, ``snapshot_download``,
``HfApi.list_repo_files``) and its cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``). Offline
(``HF_HUB_OFFLINE=1`` or ``VISIONFM_OFFLINE=1``, read on every call) only the cache is used; a file that
is not cached is one line naming the repository, the file, the cache folder and how to get it.

A reference is only ever tried on the Hub when it is not an existing local path (callers check that first);
``looks_like_hub_ref`` refuses strings that are clearly file names (``runs/ckpt.pth``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from visionfm.errors import CheckpointError, VisionFMError
from visionfm.io.download import is_offline, offline_names

__all__ = ["HubRef", "parse_hub_ref", "looks_like_hub_ref", "hub_cache_dir", "hub_file", "hub_weights",
           "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
# a path ending like a file (a missing local checkpoint, an image...) is never looked up on the Hub
_FILE_SUFFIXES = CHECKPOINT_SUFFIXES + (".json", ".yaml", ".yml", ".txt", ".npy", ".npz", ".pkl", ".png", ".jpg",
                                        ".jpeg", ".tif", ".tiff", ".zip", ".tar", ".gz", ".csv")
_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[\w.\-/]+?))?(?::(?P<file>[^:]+))?$")


@dataclass(frozen=True)
class HubRef:
    """``repo_id`` with an optional ``revision`` (branch, tag or commit) and ``filename`` inside the repository."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") + (f":{self.filename}" if self.filename
                                                                              else "")


def parse_hub_ref(text: str) -> HubRef | None:
    """``org/name[@revision][:filename]`` as a :class:`HubRef`, or ``None`` when ``text`` is not of that form."""
    if not isinstance(text, str):
        return None
    m = _REF.match(text.strip())
    if m is None:
        return None
    repo = m.group("repo")
    if repo.lower().endswith(_FILE_SUFFIXES) or ".." in repo or repo.endswith((".", "-")):
        return None
    return HubRef(repo, m.group("rev") or None, m.group("file") or None)


def looks_like_hub_ref(text: str) -> bool:
    return parse_hub_ref(text) is not None and not Path(text).expanduser().exists()


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face cache folder: ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    huggingface_hub's default (environment read on every call)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _offline_line(ref: HubRef, filename: str, cache: Path, why: str) -> str:
    rev = f" --revision {ref.revision}" if ref.revision else ""
    return (f"{ref.repo_id!r} is not a local path, and {filename} of that Hugging Face repository is not in the "
            f"cache {cache} ({why}); run once online to "
            f"cache it, or `hf download {ref.repo_id} {filename}{rev} --cache-dir {cache}`, or download it from "
            f"https://huggingface.co/{ref.repo_id} and pass the local path instead")


def _translate(exc: Exception, ref: HubRef, filename: str, cache: Path, offline: bool,
               error: type[VisionFMError]) -> VisionFMError:
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)) and offline:
        why = f"offline mode is on ({offline_names()})"
        return error(_offline_line(ref, filename, cache, why))
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return error(f"{ref.repo_id!r} is not a local path and no Hugging Face Hub repository of that name was "
                     "found (a private or gated one needs a token: `hf auth login` or token=...)")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return error(f"{ref.repo_id!r}: revision {ref.revision!r} not found on the Hugging Face Hub")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return error(f"{ref.repo_id!r}: the repository has no file {filename!r}"
                     + (f" at revision {ref.revision!r}" if ref.revision else ""))
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):  # online, but the Hub could not be reached
        return error(_offline_line(ref, filename, cache, f"the Hub could not be reached: {_first_line(exc)}"))
    return error(f"{ref.repo_id!r}: downloading {filename} from the Hugging Face Hub failed ({_first_line(exc)})")


def hub_file(ref: HubRef, filename: str, *, cache_dir: str | os.PathLike[str] | None = None,
             token: str | bool | None = None, local_files_only: bool = False,
             error: type[VisionFMError] = CheckpointError) -> Path:
    """``filename`` of ``ref``'s repository, from the cache or downloaded into it (``hf_hub_download``)."""
    from huggingface_hub import hf_hub_download

    cache = hub_cache_dir(cache_dir)
    offline = local_files_only or is_offline()
    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision, cache_dir=cache, token=token,
                                    local_files_only=offline, library_name="visionfm"))
    except Exception as exc:  # huggingface_hub's error types, network errors
        raise _translate(exc, ref, filename, cache, offline, error) from None


def _single_checkpoint(files: list[str], ref: HubRef, error: type[VisionFMError]) -> str:
    found = sorted(f for f in files if f.lower().endswith(CHECKPOINT_SUFFIXES))
    if len(found) == 1:
        return found[0]
    what = f"{len(found)} checkpoint files ({', '.join(found[:6])})" if found else "no checkpoint file"
    raise error(f"{ref.repo_id!r}: the repository holds neither a visionfm export (config.json + model.safetensors) "
                f"nor a single checkpoint file but {what}; name one as {ref.repo_id}:<file>")


def hub_weights(ref: HubRef | str, *, cache_dir: str | os.PathLike[str] | None = None, token: str | bool | None = None,
                local_files_only: bool = False, error: type[VisionFMError] = CheckpointError) -> Path:
    """The local copy of encoder weights on the Hub: the named file (``org/name:file``); else the folder of a
    repository holding ``config.json`` + ``model.safetensors`` (a visionfm export or model folder); else the
    repository's only checkpoint file (``.safetensors``, ``.pth``...)."""
    if isinstance(ref, str):
        parsed = parse_hub_ref(ref)
        if parsed is None:
            raise error(f"{ref!r} is not a Hugging Face Hub reference; expected org/name[@revision][:filename]")
        ref = parsed
    kw = dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only, error=error)
    if ref.filename:
        return hub_file(ref, ref.filename, **kw)  # type: ignore[arg-type]
    cache = hub_cache_dir(cache_dir)
    if local_files_only or is_offline():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache,
                                            local_files_only=True))
        except Exception as exc:
            raise _translate(exc, ref, "config.json", cache, True, error) from None
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    else:
        from huggingface_hub import HfApi

        try:
            files = list(HfApi(token=token if isinstance(token, str) else None).list_repo_files(
                ref.repo_id, revision=ref.revision))
        except Exception as exc:
            raise _translate(exc, ref, "config.json", cache, False, error) from None
    if "config.json" in files and "model.safetensors" in files:
        hub_file(ref, "config.json", **kw)  # type: ignore[arg-type]
        return hub_file(ref, "model.safetensors", **kw).parent  # type: ignore[arg-type]
    return hub_file(ref, _single_checkpoint(files, ref, error), **kw)  # type: ignore[arg-type]
