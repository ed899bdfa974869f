"""Predictor: load a checkpoint or an export folder, predict probability maps at each
image's original size, optionally with test-time augmentation."""

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.io import read_image, rgb_of, rgb_of_array
from ..data.normalization import IMAGENET, Normalization
from ..data.transforms import resize
from ..errors import ConfigError
from ..models import build_model
from ..models.device import amp_dtype, resolve_device
from ..runs.checkpoint import load_checkpoint, model_weights, weights_choice
from .export_format import (
    check_weights_request,
    export_normalization,
    file_fingerprint,
    held_weights,
    model_config,
    read_export,
    weights_fingerprint,
)
from .fetch import HubError, is_hub_id, resolve


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: horizontal flip and/or extra input scales; the
    probabilities of all variants are averaged at the output size."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def parse(cls, specs: list[str] | None) -> "TTA":
        """--tta values ('flip', 'scales=0.75,1,1.25', 'none') as a TTA."""
        flip, scales = False, (1.0,)
        for spec in specs or []:
            if spec == "flip":
                flip = True
            elif spec.startswith("scales="):
                try:
                    scales = tuple(float(v) for v in spec[len("scales=") :].split(","))
                except ValueError:
                    scales = ()
                if not scales or any(not 0.25 <= s <= 4 for s in scales):
                    raise ConfigError(
                        f"--tta {spec}: scales must be numbers between 0.25 and 4, e.g. scales=0.75,1,1.25"
                    )
            elif spec != "none":
                raise ConfigError(f"--tta {spec!r}: use flip and/or scales=0.75,1,1.25")
        return cls(flip, scales)

    def __str__(self) -> str:
        parts = (["flip"] if self.flip else []) + (
            [f"scales={','.join(map(str, self.scales))}"] if self.scales != (1.0,) else []
        )
        return " ".join(parts) or "none"


class Predictor:
    """A model ready to predict: input normalisation, size, device, TTA and precision.
    Build it with Predictor.load(checkpoint or export folder). `weights`: the set the model
    holds, 'ema' or 'raw' (None: unknown, an older export's), which every record names."""

    def __init__(
        self,
        model,
        img_size: int,
        device: torch.device,
        tta: TTA = TTA(),
        amp: bool = True,
        norm: Normalization | None = None,
        weights: str | None = None,
    ):
        self.model = model.eval().to(device)
        self.weights = weights
        # the statistics the weights were trained with (default: the model's own)
        self.norm = norm or getattr(model, "normalization", IMAGENET)
        self.model.normalization = self.norm
        self.img_size = img_size
        self.device = device
        self.tta = tta
        self.dtype = amp_dtype("auto" if amp else "off", device)  # the CPU runs fp32
        self.stride = getattr(model, "stride", 32)  # input sides the model takes: multiples of this

    @classmethod
    def load(
        cls,
        path: str,
        weights: str = "auto",
        device: str = "auto",
        tta: TTA = TTA(),
        amp: bool = True,
        runtime: str = "auto",
    ) -> "Predictor":
        """A training checkpoint or an export folder. weights: 'auto' (what the run validated
        with: the EMA weights of an EMA run, in last.pth as in best_model.pth), 'ema' or 'raw'.
        An export folder holds one set of weights: asking it for another one is refused.
        runtime 'onnx' (or a path to one of an export's .onnx graphs, fp32, fp16 or int8): the
        graph in ONNX Runtime on the CPU instead of PyTorch; the folder's model.onnx by default."""
        if runtime == "onnx" or str(path).endswith(".onnx"):
            return OnnxPredictor.load_graph(path, tta, weights)
        if os.path.isdir(path):
            cfg, state = read_export(path)
            check_weights_request(path, cfg, weights)
            mcfg, img_size = model_config(cfg["model"]), int(cfg["img_size"])
            norm, held = export_normalization(cfg), held_weights(cfg)
        else:
            ckpt = load_checkpoint(path)
            norm = Normalization.of_checkpoint(ckpt)
            cfg = ckpt.get("config", {})
            mcfg, img_size = model_config(cfg.get("model", {})), int(cfg.get("data", {}).get("img_size", 384))
            state, held = model_weights(ckpt, weights, path), weights_choice(ckpt, weights, path)
        model = build_model(mcfg)
        model.load_state_dict(state)
        return cls(model, img_size, resolve_device(device), tta, amp, norm, held)

    def identity(self) -> dict:
        """What decides this predictor's outputs, for the records that name what made them (the
        weights' fingerprint among it: the same weights from a checkpoint or an export match)."""
        return {
            "weights": self.weights,
            "weights_sha256": weights_fingerprint(self.model.state_dict()),
            "tta": str(self.tta),
            "img_size": self.img_size,
            "runtime": "torch",
        }

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised images -> (B, 1, h', w') float logits."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(batch.to(self.device, non_blocking=True)).logits.float()

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Probability maps (on the device) at each image's (H, W). Logits are resized
        before the sigmoid, then the TTA variants are averaged."""
        outs = [torch.zeros(s, device=self.device) for s in sizes]
        variants = [(s, f) for s in self.tta.scales for f in ((False, True) if self.tta.flip else (False,))]
        for scale, flip in variants:
            x = batch
            if scale != 1.0:
                # multiples of the stride; at least 2x2 at the deepest level, which norms need
                side = max(2 * self.stride, int(round(self.img_size * scale / self.stride)) * self.stride)
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            if flip:
                x = x.flip(-1)
            logits = self.logits(x)
            if flip:
                logits = logits.flip(-1)
            for j, size in enumerate(sizes):
                up = F.interpolate(logits[j : j + 1], size=size, mode="bilinear", align_corners=False)
                outs[j] += torch.sigmoid(up)[0, 0]
        return [o / len(variants) for o in outs]

    def predict(self, image) -> np.ndarray:
        """Path, PIL image or HxW(x3/4) array -> probability map (float32, 0..1) at the image's size."""
        arr = as_rgb(image)
        return self.probabilities(self.prepare(arr)[None], [arr.shape[:2]])[0].cpu().numpy()

    def prepare(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (3, S, S) network input: resized, normalised as in training."""
        return torch.from_numpy(self.norm.apply(resize(rgb, self.img_size)))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, revision: str | None = None, cache_dir: str | None = None, **kwargs
    ) -> "Predictor":
        """A Hugging Face Hub model id ('user/name', from the Hub or, with HF_HUB_OFFLINE=1, its
        cache) or a local export folder or checkpoint; kwargs as for `load`. Needs camodet[hub]."""
        return cls.load(resolve(name_or_path, revision, cache_dir), **kwargs)


class OnnxPredictor(Predictor):
    """A Predictor whose network is an exported ONNX graph in ONNX Runtime (CPU): the graph
    returns probabilities, turned back into logits so that resizing, TTA and thresholds are
    the Predictor's own. The export's config.json gives the size and the normalisation."""

    def __init__(
        self,
        session,
        graph: str,
        img_size: int,
        norm: Normalization,
        tta: TTA = TTA(),
        stride: int = 32,
        weights: str | None = None,
    ):
        self.session, self.graph = session, graph
        self.model, self.norm, self.img_size, self.tta = None, norm, img_size, tta
        self.device, self.dtype, self.stride = torch.device("cpu"), None, stride
        self.weights = weights

    @classmethod
    def load_graph(cls, path: str, tta: TTA = TTA(), weights: str = "auto") -> "OnnxPredictor":
        """An export folder (its model.onnx) or one of its .onnx files; weights as for an export
        folder (the graphs are of the weights it holds)."""
        import json

        graph = os.path.join(path, "model.onnx") if os.path.isdir(path) else path
        folder = os.path.dirname(os.path.abspath(graph))
        config_path = os.path.join(folder, "config.json")
        if not (os.path.isfile(graph) and os.path.isfile(config_path)):
            raise ConfigError(
                f"--runtime onnx: {path} is not an export folder with model.onnx (or a .onnx file in one); "
                f"make one with 'camodet export CKPT DIR --onnx'"
            )
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("--runtime onnx needs onnxruntime: pip install 'camodet[export]'") from None
        with open(config_path) as fh:
            cfg = json.load(fh)
        check_weights_request(folder, cfg, weights)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        stride = int(cfg.get("input", {}).get("multiple_of", 32))
        norm, held = export_normalization(cfg), held_weights(cfg)
        return cls(session, graph, int(cfg["img_size"]), norm, tta, stride, held)

    def identity(self) -> dict:
        """As Predictor's, with the graph's own fingerprint: an int8 graph of the same weights
        gives other outputs."""
        return {
            "weights": self.weights,
            "graph_sha256": file_fingerprint(self.graph),
            "tta": str(self.tta),
            "img_size": self.img_size,
            "runtime": "onnx",
        }

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        probs = self.session.run(None, {"image": batch.float().cpu().numpy()})[0]
        return torch.logit(torch.from_numpy(probs).float(), eps=1e-7)


def as_rgb(image) -> np.ndarray:
    """HxWx3 uint8 from a path, a PIL image (any mode) or an array, all through data.io's one
    conversion (EXIF upright, alpha on black, 16-bit scaled): the same photo gives the same
    pixels however it arrives (the web app passes arrays, `camodet predict` paths)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(str(image))
    if hasattr(image, "convert"):
        from PIL import ImageOps

        return rgb_of(ImageOps.exif_transpose(image))
    return rgb_of_array(image)


def load_predictor(source: str, **kwargs):
    """Predictor from a checkpoint, an export folder or a Hub id (what the CLI's model argument takes)."""
    if not os.path.exists(source) and not is_hub_id(source):
        raise HubError(
            f"{source}: no such checkpoint or export folder, and not a Hub id (user/name); check the path"
        )
    return Predictor.load(resolve(source), **kwargs)
