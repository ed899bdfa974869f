"""Backbone weights from a file that holds timm's tensors under other key names.

Weights files from packages and downloads often hold exactly a timm model's tensors, named by
another implementation (`_blocks.3._bn1.weight` for timm's `blocks.1.1.bn2.weight`). Rather
than a renaming table per source, the keys are matched generally, most trustworthy first:

1. by name, after stripping wrapper prefixes (`module.`, `model.`, `backbone.`, ... or any
   prefix every key shares);
2. by order and shape: the file's tensors in their stored order against the timm model's in
   definition order (implementations of one architecture define layers in the same order),
   every pair of the same shape; extra tensors at the end of the file (a classifier of another
   size) are ignored.

Whatever cannot be matched one of these ways is refused in one line naming the file."""

import torch

from .timm_lib import timm

# Prefixes that training frameworks and wrappers put in front of a model's own keys.
WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "body.", "net.", "base_model.", "features.")


class WeightsMismatch(ValueError):
    """The file's tensors cannot be matched to the timm model's; the message is one line."""


def _norm(key: str) -> str:
    # features_only wrappers rename 'stages.0' to 'stages_0'; compare in one spelling.
    return key.replace("_", ".")


def _skip(key: str) -> bool:
    # A counter, not a weight: absent from some files, and never worth a mismatch.
    return key.endswith("num_batches_tracked")


def timm_shapes(name: str) -> dict[str, torch.Size]:
    """Key -> shape of timm's full `name` model in definition order, without building weights."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return {k: v.shape for k, v in model.state_dict().items() if not _skip(k)}


def needed_keys(full: dict[str, torch.Size], feature_keys: list[str]) -> set[str]:
    """The full model's keys that a features_only model of it holds (compared as _norm spells them)."""
    feats = {_norm(k) for k in feature_keys if not _skip(k)}
    return {k for k in full if _norm(k) in feats}


def _covers(sd: dict, full: dict, needed: set[str]) -> bool:
    return all(k in sd and tuple(sd[k].shape) == tuple(full[k]) for k in needed)


def _strip_candidates(sd: dict) -> list[dict]:
    """The file's keys with known wrapper prefixes removed, then with the dotted prefix all keys share."""
    out = []
    current = sd
    for _ in range(3):  # nested wrappers: 'module.model.x'
        stripped = {
            next((k[len(p) :] for p in WRAPPER_PREFIXES if k.startswith(p)), k): v for k, v in current.items()
        }
        if stripped.keys() == current.keys() or len(stripped) != len(current):
            break
        out.append(stripped)
        current = stripped
    keys = list(sd)
    common = keys[0].split(".")[:-1] if keys else []
    for k in keys[1:]:
        parts = k.split(".")
        n = 0
        while n < min(len(common), len(parts) - 1) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    if common:
        cut = len(".".join(common)) + 1
        out.append({k[cut:]: v for k, v in sd.items()})
    return out


def _by_order(sd: dict, full: dict[str, torch.Size], needed: set[str], path: str, name: str) -> dict:
    """Pair the file's tensors with the model's in order while shapes agree; every needed
    tensor must be paired."""
    mine = [(k, v) for k, v in sd.items() if not _skip(k)]
    matched: dict = {}
    for i, (target, shape) in enumerate(full.items()):
        if i >= len(mine):
            break
        key, value = mine[i]
        if tuple(value.shape) != tuple(shape):
            if needed <= matched.keys():
                break  # past what the backbone needs (a classifier of another size): fine
            raise WeightsMismatch(
                f"--pretrained-path {path} does not fit {name}: its keys match none of timm's by name, and "
                f"by order its tensor {i} ({key}, shape {tuple(value.shape)}) meets {target} "
                f"(shape {tuple(shape)}); the file must hold timm's {name} tensors in the same order"
            )
        matched[target] = value
    if not needed <= matched.keys():
        raise WeightsMismatch(
            f"--pretrained-path {path} does not fit {name}: {len(mine)} tensors in the file, "
            f"{len(needed)} needed by the backbone; the file must hold timm's {name} tensors"
        )
    return matched


def to_timm_keys(sd: dict, name: str, feature_keys: list[str], path: str) -> tuple[dict, str]:
    """(state dict under timm's full-model key names, how it was matched: 'name', 'prefix' or
    'order'). `feature_keys`: the state-dict keys of the features_only model to be loaded."""
    full = timm_shapes(name)
    needed = needed_keys(full, feature_keys)
    by_norm = {_norm(k): v for k, v in sd.items()}
    if all(_norm(k) in by_norm and tuple(by_norm[_norm(k)].shape) == tuple(full[k]) for k in needed):
        return sd, "name"
    for candidate in _strip_candidates(sd):
        if _covers(candidate, full, needed):
            return candidate, "prefix"
    return _by_order(sd, full, needed, path, name), "order"


def describe(how: str) -> str:
    """A log fragment for how the file's keys were matched."""
    return {
        "name": "keys matched by name",
        "prefix": "keys matched by name after stripping a prefix",
        "order": "keys matched by order and shape (the file names them differently)",
    }[how]


__all__ = ["WeightsMismatch", "to_timm_keys", "describe", "timm_shapes", "needed_keys"]
