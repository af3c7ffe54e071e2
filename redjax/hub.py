"""Hugging Face hub ids as model folders and data files, through the Hugging Face cache.

A model path (`model.path`, `model.tokenizer`, `--model`) may be a hub id, OWNER/NAME or
OWNER/NAME@REVISION; a data file (`data.train`, `data.test`, `--data`) may be a dataset repo's
file, hf://datasets/OWNER/NAME[@REVISION]/PATH (the hub's own URI, as pandas and huggingface_hub's
HfFileSystem read it). huggingface_hub downloads it into its cache (HF_HOME / HF_HUB_CACHE, read
when called) the first time and finds it there afterwards; offline (HF_HUB_OFFLINE=1, or no
network) only the cache is read. A path that exists on disk is always used as it is.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any
from urllib.parse import unquote

REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]+"  # OWNER/NAME
MODEL_ID = re.compile(rf"(?:hf://)?({REPO})(?:@([^/]+))?")
DATA_URI = re.compile(rf"hf://datasets/({REPO})(?:@([^/]+))?/(.+)")
# What redjax reads of a model repo, top level only: configs, tokenizer and chat template files
# (CONFIG_FILES), and with the weights, safetensors (other formats and subfolders stay remote).
CONFIG_FILES = ("*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken")
WEIGHT_FILES = ("*.safetensors",)
TRUE = {"1", "on", "yes", "true"}


def cache_dir() -> str:
    """The hub cache huggingface_hub uses, from the environment as it is now."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def offline() -> bool:
    """Whether the hub may not be asked (HF_HUB_OFFLINE, as set now or at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE


def is_model_id(spec: str) -> bool:
    """Whether `spec` names a hub model (OWNER/NAME[@REVISION]) rather than a local path."""
    return not os.path.exists(spec) and MODEL_ID.fullmatch(spec) is not None


def model_folder(spec: str, *, weights: bool = True) -> str:
    """A local folder as it is; a hub id as its snapshot folder in the cache, downloaded first
    where the hub can be reached (`weights`: the safetensors too, else only CONFIG_FILES)."""
    spec = os.fspath(spec)
    if not is_model_id(spec):
        return spec
    from huggingface_hub import errors, snapshot_download

    repo, revision = MODEL_ID.fullmatch(spec).groups()
    patterns = [*CONFIG_FILES, *(WEIGHT_FILES if weights else ())]
    try:
        return snapshot_download(
            repo,
            revision=revision and unquote(revision),
            cache_dir=cache_dir(),
            local_files_only=offline(),
            allow_patterns=patterns,
            ignore_patterns=["*/*"],
        )
    except (OSError, ValueError, errors.EntryNotFoundError) as e:  # the hub's, as one line
        raise _error(e, spec, "model", repo) from None


def local_model(model: Any) -> Any:
    """A config's model section (config.ModelCfg) with its hub ids, `path` and `tokenizer`,
    resolved to their cache folders: resolved once, every loader of a run reads local folders
    rather than asking the hub again."""
    return dataclasses.replace(
        model,
        path=model.path and model_folder(model.path),
        tokenizer=model.tokenizer and model_folder(model.tokenizer, weights=False),
    )


def data_file(spec: str) -> str:
    """A local file as it is; hf://datasets/OWNER/NAME[@REVISION]/PATH as its copy in the cache,
    downloaded first where the hub can be reached."""
    spec = os.fspath(spec)
    if os.path.exists(spec) or not spec.startswith("hf://"):
        return spec
    match = DATA_URI.fullmatch(spec)
    if match is None:
        raise ValueError(
            f"data file {spec!r}: a hub file is hf://datasets/OWNER/NAME/PATH (or "
            "hf://datasets/OWNER/NAME@REVISION/PATH), e.g. "
            "hf://datasets/openai/gsm8k/main/test-00000-of-00001.parquet"
        )
    from huggingface_hub import errors, hf_hub_download

    repo, revision, path = match.groups()
    try:
        return hf_hub_download(
            repo,
            path,
            repo_type="dataset",
            revision=revision and unquote(revision),
            cache_dir=cache_dir(),
            local_files_only=offline(),
        )
    except (OSError, ValueError, errors.EntryNotFoundError) as e:
        raise _error(e, spec, "dataset", repo, path) from None


def _error(e: Exception, spec: str, kind: str, repo: str, path: str | None = None) -> Exception:
    """One line naming the id and what to do, for an error of huggingface_hub."""
    from huggingface_hub import errors

    model = kind == "model"
    lead = f"model {spec!r} is not a local folder, and" if model else f"data file {spec!r}:"
    if isinstance(e, getattr(errors, "IncompleteSnapshotError", ())):
        return ValueError(
            f"{lead} its copy in the Hugging Face cache {cache_dir()} is incomplete: download it "
            "again with the network on (HF_HUB_OFFLINE unset)"
        )
    if isinstance(e, errors.LocalEntryNotFoundError):
        subject = f"model {spec!r} is not a local folder and" if model else f"data file {spec!r} is"
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline() else "the hub cannot be reached"
        fetch = f"hf download {repo}" if model else f"hf download {repo} {path} --repo-type dataset"
        return FileNotFoundError(
            f"{subject} not in the Hugging Face cache {cache_dir()} (HF_HOME / HF_HUB_CACHE), and "
            f"{why}: download it once with the network on (`{fetch}`), or give a local "
            + ("folder" if model else "file")
        )
    if isinstance(e, errors.GatedRepoError):
        return ValueError(
            f"{lead} the {kind} {repo!r} is gated on the Hugging Face hub: accept its terms on its "
            "page, then log in (`hf auth login` or HF_TOKEN)"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return FileNotFoundError(
            f"{lead} the Hugging Face hub has no {kind} {repo!r} (a typo, or private: log in "
            "with `hf auth login` or HF_TOKEN)"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return FileNotFoundError(f"{lead} the {kind} {repo!r} has no such revision on the hub")
    if isinstance(e, errors.EntryNotFoundError):
        return FileNotFoundError(f"{lead} the {kind} {repo!r} has no file {path!r}")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ValueError(f"{lead} the Hugging Face hub could not give it: {first}")
