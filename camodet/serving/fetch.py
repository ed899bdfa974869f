"""Fetching a model from the Hugging Face Hub: `resolve` turns 'user/name' into a local folder
from the Hub or its cache, for `Predictor.from_pretrained` and every command that loads a model.
Below the Predictor (publishing, `camodet push`, is hub.py, above export).
huggingface_hub is an optional extra: pip install 'camodet[hub]'."""

import json
import os
import re

from ..errors import CamodetError
from .export_format import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS

# 'user/name': what the Hub accepts as a model id (letters, digits, '-', '_', '.'; 96 at most)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_LOCAL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".json", ".onnx")


class HubError(CamodetError, RuntimeError):
    """Publishing or fetching a model failed; the message names the model and the way out."""


def hub_client():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("Hugging Face Hub support needs huggingface_hub: pip install 'camodet[hub]'") from None
    return huggingface_hub


def is_hub_id(name: str) -> bool:
    """'user/name' that is not a local path: a missing 'runs/x.pth' or 'runs/best' (its first
    part a local folder) is a typo, not a model id."""
    return (
        bool(REPO_ID.match(name))
        and not os.path.exists(name)
        and not name.lower().endswith(_LOCAL_SUFFIXES)
        and not os.path.isdir(name.split("/")[0])
    )


def resolve(name_or_path: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """A local checkpoint or folder as it is; a Hub id -> the cached snapshot folder holding
    model.safetensors and config.json (downloaded when online and not cached yet;
    HF_HUB_OFFLINE=1 uses the cache only). config.json comes first: a repository that is not a
    camodet export is refused before its weights are downloaded."""
    if os.path.exists(name_or_path) or not is_hub_id(name_or_path):
        return name_or_path
    hub = hub_client()
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name, wanted = name_or_path, EXPORT_CONFIG
    try:
        config = hub.hf_hub_download(name, EXPORT_CONFIG, revision=revision, cache_dir=cache_dir)
        check_hub_config(name, config)
        snapshot, wanted = os.path.dirname(config), EXPORT_WEIGHTS
        # the weights of the very commit whose config.json was checked, even if the repo moved on
        hub.hf_hub_download(name, EXPORT_WEIGHTS, revision=os.path.basename(snapshot), cache_dir=cache_dir)
        return snapshot
    except LocalEntryNotFoundError:
        raise HubError(
            f"{name}: not a local file or folder, and not in the Hugging Face cache "
            f"while offline or unreachable; connect once (unset HF_HUB_OFFLINE) to download it, "
            f"or pass an export folder"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{name}: the Hub has no revision {revision!r} of this model; pass a branch, tag or "
            f"commit it has (default: main)"
        ) from None
    except EntryNotFoundError:
        raise HubError(
            f"{name}: not a camodet model ({wanted} missing on the Hub); "
            f"publish one with 'camodet push', or pass a local export folder"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise HubError(
            f"{name}: no such local file or folder, and no such model on the Hugging Face Hub (or it "
            f"is private or gated: log in with 'hf auth login'); check the path or the id"
        ) from None
    except HfHubHTTPError as e:
        raise HubError(
            f"{name}: the Hub answered {e.response.status_code}; try again later, "
            f"or pass a local export folder"
        ) from None


def check_hub_config(name: str, path: str) -> None:
    """A Hub repository's config.json must be a camodet export's (a transformers model's is not)."""
    try:
        with open(path) as fh:
            found = json.load(fh).get("format")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != EXPORT_FORMAT:
        raise HubError(
            f"{name}: not a camodet model (its config.json has format {found!r}, not {EXPORT_FORMAT!r}); "
            f"publish one with 'camodet push', or pass a local export folder"
        )


def model_name(source: str) -> str:
    """The name a table or plot gives a model: its run or export folder (a checkpoint in 'runs/x/'
    -> 'x'), a predictions folder, or a Hub id's model name ('user/camo-model' -> 'camo-model')."""
    if is_hub_id(source):
        return source.split("/", 1)[1]
    path = os.path.abspath(source)
    return os.path.basename(path if os.path.isdir(path) else os.path.dirname(path)) or "camodet"
