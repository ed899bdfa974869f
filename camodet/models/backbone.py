"""timm backbone wrapper: multi-scale features, channel/reduction contract, and
stage groups for freezing (one group per feature level, deepest last)."""

import contextlib
import difflib
import logging
import os
import tempfile

import torch
from torch import nn

from ..config import ModelConfig
from ..data.normalization import IMAGENET, Normalization
from ..errors import CamodetError, ConfigError
from .timm_lib import timm
from .weights import WeightsMismatch, describe, to_timm_keys

log = logging.getLogger("camodet")


class BackboneError(CamodetError, ValueError):
    """A backbone or its weights cannot be used; the message says how to proceed."""


def check_backbone(name: str, img_size: int, multiple: int = 1, decoder: str = "") -> None:
    """Reject an unknown timm name (suggesting close ones) or an image size that is not a
    multiple of the backbone's output stride (times `multiple`, for a decoder that scales the
    image), without building real weights."""
    available = timm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"--backbone {name} is not a timm model{hint}")
    try:
        with torch.device("meta"):
            body = timm.create_model(name, features_only=True, pretrained=False)
    except Exception as e:  # timm raises RuntimeError/ValueError/NotImplementedError variously
        raise ConfigError(
            f"--backbone {name} does not support features_only ({e}); choose a CNN or "
            f"hierarchical transformer such as edgenext_base or resnet50"
        ) from None
    stride = max(body.feature_info.reduction())
    step = stride * multiple
    if img_size % step:
        lower, upper = img_size // step * step, (img_size // step + 1) * step
        what = f"{name}'s output stride {stride}"
        if multiple > 1:
            what = f"{multiple} x {what} (--decoder {decoder} also runs the image at other scales)"
        raise ConfigError(
            f"--img-size {img_size} is not a multiple of {what}; use {lower or upper} or {upper}"
        )


def check_model(cfg: ModelConfig, img_size: int) -> None:
    """check_backbone for this model's backbone and decoder."""
    from .decoders import size_multiple

    check_backbone(cfg.backbone, img_size, size_multiple(cfg), cfg.decoder)


def backbone_normalization(name: str) -> Normalization:
    """The input statistics of timm's pretrained config for `name` (built on the meta device: no
    weights, no network); ImageNet's where the config names none."""
    with torch.device("meta"):
        body = timm.create_model(name, features_only=True, pretrained=False)
    return normalization_of(body)


def normalization_of(body: nn.Module) -> Normalization:
    cfg = getattr(body, "pretrained_cfg", None) or {}
    if cfg.get("mean") is None or cfg.get("std") is None:
        return IMAGENET
    return Normalization(tuple(cfg["mean"]), tuple(cfg["std"]))


def _norm(name: str) -> str:
    # features_only wrappers rename 'stages.0' to 'stages_0'; compare in one spelling.
    return name.replace("_", ".")


def assign_groups(module_names: list[str], feature_modules: list[str]) -> dict[str, int]:
    """Group index per module name, in definition order: a module inside feature
    module i is in group i; one before it (a stem, a block between two taps)
    joins the next feature module's group; anything after the last joins the last."""
    feats = [_norm(f) for f in feature_modules]
    groups: dict[str, int] = {}
    pending: list[str] = []
    for name in module_names:
        n = _norm(name)
        hit = next((i for i, f in enumerate(feats) if n == f or n.startswith(f + ".")), None)
        if hit is None:
            pending.append(name)
            continue
        for p in pending:
            groups[p] = hit
        pending = []
        groups[name] = hit
    for p in pending:
        groups[p] = len(feats) - 1
    return groups


class Backbone(nn.Module):
    """A timm backbone as a feature pyramid: four levels, strides 4 to 32, their
    channel counts, the groups that unfreeze stage by stage, and its input normalisation."""

    def __init__(self, name: str, pretrained: bool = False, pretrained_path: str | None = None):
        super().__init__()
        self.name = name
        self.body = _create(name, pretrained, pretrained_path)
        info = self.body.feature_info
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        self.num_groups = len(self.channels)
        self.normalization = normalization_of(self.body)  # what its pretrained weights expect
        module_names = [n for n, _ in self.body.named_modules() if n]
        self._module_group = assign_groups(module_names, list(info.module_name()))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Features in the input's memory format. Some backbones (EdgeNeXt, ConvNeXt: norm and
        # MLP in NHWC, then permuted back) hand out channels_last strides for a contiguous
        # input; the decoder then mixes formats, and on the CPU the backward of GroupNorm and
        # GELU with one operand in each format is 20x slower than in either one.
        fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        return [f.contiguous(memory_format=fmt) for f in self.body(x)]

    def group_of(self, param_name: str) -> int:
        module = param_name.rsplit(".", 1)[0]
        while module not in self._module_group and "." in module:
            module = module.rsplit(".", 1)[0]
        return self._module_group.get(module, 0)

    def named_parameters_by_group(self) -> list[list[tuple[str, nn.Parameter]]]:
        groups: list[list] = [[] for _ in range(self.num_groups)]
        for n, p in self.body.named_parameters():
            groups[self.group_of(n)].append((n, p))
        return groups

    def modules_of_group(self, g: int) -> list[nn.Module]:
        return [m for n, m in self.body.named_modules() if n and self._module_group.get(n) == g]


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _create(name: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    if pretrained_path:
        if not os.path.isfile(pretrained_path):
            raise BackboneError(f"--pretrained-path {pretrained_path}: no such file")
        file_sd = read_state_dict(pretrained_path)  # first, so a non-weights file is named as such
        # A file naming timm's tensors otherwise (another package's keys) is renamed, in a temp file.
        file_sd, load_path, tmp = timm_named_file(file_sd, name, pretrained_path)
        # timm maps a full-model state dict onto the features_only model and drops the classifier.
        try:
            with _timm_loading_quiet():
                body = timm.create_model(
                    name, features_only=True, pretrained=True, pretrained_cfg_overlay={"file": load_path}
                )
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise BackboneError(
                f"--pretrained-path {pretrained_path} does not fit {name}: {first}; "
                f"the file must be a state dict of timm's {name}"
            ) from None
        finally:
            if tmp:
                os.unlink(tmp)
        loaded = _verify_complete(body, file_sd, name, pretrained_path)
        log.info(
            f"--pretrained-path {pretrained_path}: all {loaded} tensors of {name}'s feature layers loaded"
        )
        return body
    if pretrained:
        try:
            return timm.create_model(name, features_only=True, pretrained=True)
        except Exception as e:
            raise BackboneError(
                f"could not fetch ImageNet weights for {name} ({type(e).__name__}: no network?); "
                f"use --pretrained-path FILE with a local .pth/.safetensors, or pre-fill the Hugging Face "
                f"cache and set HF_HUB_OFFLINE=1, or drop --pretrained"
            ) from None
    return timm.create_model(name, features_only=True, pretrained=False)


def timm_named_file(file_sd: dict, name: str, path: str) -> tuple[dict, str, str | None]:
    """(state dict under timm's names, the file for timm to load, a temp file to delete or None).
    Keys are matched by name, by name after stripping wrapper prefixes, or by order and shape
    (see camodet/models/weights.py); a file that fits none of these is refused in one line."""
    with torch.device("meta"):
        feature_keys = list(timm.create_model(name, features_only=True, pretrained=False).state_dict())
    try:
        sd, how = to_timm_keys(file_sd, name, feature_keys, path)
    except WeightsMismatch as e:
        raise BackboneError(str(e)) from None
    if how == "name":
        return file_sd, path, None
    log.info(f"--pretrained-path {path}: {describe(how)}")
    fd, tmp = tempfile.mkstemp(suffix=".pth")
    os.close(fd)
    torch.save(sd, tmp)
    return sd, tmp, tmp


def read_state_dict(path: str) -> dict:
    """A plain state dict from .safetensors or .pth (unwrapping 'state_dict'/'model', 'module.')."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(
            f"--pretrained-path {path}: not a readable weights file ({type(e).__name__}); "
            f"give a .pth state dict or a .safetensors file"
        ) from None
    if not isinstance(sd, dict):
        raise BackboneError(
            f"--pretrained-path {path}: holds a {type(sd).__name__}, not a state dict; "
            f"save model.state_dict() instead"
        )
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


@contextlib.contextmanager
def _timm_loading_quiet():
    """timm logs the file it is handed (for renamed keys, a temp file the user never named) and
    warns of the classifier tensors that a features_only model drops on purpose; camodet checks
    and reports the load itself (_verify_complete), so those lines would only mislead."""
    loggers = [logging.getLogger(n) for n in ("timm.models._builder", "timm.models._helpers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _verify_complete(body: nn.Module, file_sd: dict, name: str, path: str) -> int:
    """timm loads feature models non-strictly (the classifier is dropped on purpose);
    we still insist that every feature tensor came from the file. Returns how many did."""
    have = {_norm(k): v.shape for k, v in file_sd.items()}
    wanted = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k, v in wanted.items() if have.get(_norm(k)) != v.shape]
    if missing:
        raise BackboneError(
            f"--pretrained-path {path} does not fit {name}: {len(missing)} backbone tensors "
            f"missing or of another shape (first: {missing[0]}); the file must be a state dict "
            f"of timm's {name}"
        )
    return len(wanted)
