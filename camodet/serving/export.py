"""Deployable weights: model.safetensors + config.json (enough to rebuild the model,
no training state) and, optionally, an ONNX graph checked against PyTorch."""

import contextlib
import copy
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import __version__
from ..errors import CamodetError
from ..runs.checkpoint import load_checkpoint
from ..staging import disk_full_message, is_disk_full, make_staging, share, swap_in
from .export_format import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS
from .predictor import Predictor
from .quantize import (
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_MIN_AGREEMENT,
    ONNX_INT8_FILE,
    Int8Settings,
    QuantizeError,
    split_images,
    write_int8,
)

ONNX_FILE, ONNX_FP16_FILE = "model.onnx", "model_fp16.onnx"
ONNX_TOLERANCE = 1e-3
FP16_TOLERANCE = 2e-2  # fp16 compute against fp32 PyTorch: probabilities to about two decimals


class ExportError(CamodetError, RuntimeError):
    """Exporting failed; the message says what is missing."""


class StaticSamePadConv(torch.nn.Module):
    """timm's Conv2dSame (TensorFlow's 'same' padding, in tf_efficientnet_* and others) pads by a
    function of the input size, and torch.export then reasons symbolically about every shape after
    it: minutes for tf_efficientnet_lite0. The graph only takes sizes that are multiples of the stride,
    so each such conv sees a size that is a multiple of its own stride, where the padding is a
    constant: (k - 1) * d + 1 - s, split as timm splits it. Exact for every size the graph accepts
    (the ONNX check runs a second, non-square size)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv
        pads = [max((k - 1) * d + 1 - s, 0) for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation)]
        (ph, pw) = pads
        self.pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = torch.nn.functional.pad(x, self.pad)
        return torch.nn.functional.conv2d(x, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def with_static_padding(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself when it has no size-dependent padding, else a copy with StaticSamePadConv."""
    from timm.layers import Conv2dSame

    names = [n for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    if not names:
        return model
    model = copy.deepcopy(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, StaticSamePadConv(getattr(owner, child)))
    return model


class ProbabilityHead(torch.nn.Module):
    """What the ONNX graph computes: normalised image batch -> probability map at input size."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image).logits)


EXPORT_FILES = (EXPORT_WEIGHTS, EXPORT_CONFIG, ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE)


@dataclass(frozen=True)
class Int8Request:
    """--int8: the photos to calibrate on (a folder, glob or files), how many, and the agreement
    with the fp32 graph below which the int8 graph is refused."""

    calibration: tuple[str, ...]
    count: int = DEFAULT_CALIBRATION_COUNT
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    settings: Int8Settings = Int8Settings()

    def images(self) -> list[str]:
        """The calibration photos the quantiser will read (at least two, each one decodable),
        checked before any work: it reads them after the fp32 trace (a minute or more). The flags'
        ranges are ExportOptions', checked by the options gate."""
        from ..data.io import IMAGE_EXTS, DataError, read_image
        from .predict import expand_inputs

        paths, problems = expand_inputs(list(self.calibration))
        if problems:
            item, why = problems[0]
            raise ExportError(f"--calibration {item}: {why}; give a folder or glob of photos")
        photos = [p for p in paths if p.lower().endswith(IMAGE_EXTS)]
        try:
            calibration, held = split_images(photos, self.count)
            for path in held + calibration:
                read_image(path)
        except QuantizeError as e:
            raise ExportError(str(e)) from None
        except DataError as e:
            raise ExportError(f"--calibration: {e.reason}; remove it or calibrate on other photos") from None
        return photos


def export(
    checkpoint: str,
    out_dir: str,
    weights: str = "auto",
    onnx: bool = False,
    fp16: bool = False,
    int8: Int8Request | None = None,
) -> dict:
    """Write the export folder; returns what was written and, with onnx (and fp16: the half
    precision graph too), the largest difference from PyTorch that the check measured; with
    int8, model_int8.onnx's facts (agreement with the fp32 graph, both speeds).
    The folder holds exactly what this export wrote: it is built in a hidden sibling and swapped
    in whole once every file is written and checked; an existing export folder is replaced (a
    folder holding anything else is refused); on any failure (an int8 graph below its agreement
    threshold and a full disk included) `out_dir` is left as it was."""
    check_replaceable(out_dir)
    calibration = int8.images() if int8 else None
    predictor = Predictor.load(checkpoint, weights=weights, device="cpu")
    staging = make_staging(out_dir)
    try:
        info = write_export(predictor, checkpoint, staging, onnx or bool(int8), fp16)
        if int8:
            info["int8"] = add_int8(predictor, staging, calibration, int8)
            info["files"].append(ONNX_INT8_FILE)
        swap_in(staging, out_dir)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(e):
            raise ExportError(disk_full_message(out_dir, "the export")) from None
        raise
    return info


def add_int8(predictor, folder: str, calibration: list[str], int8: Int8Request) -> dict:
    """model_int8.onnx in the staging `folder`, its facts recorded in config.json."""
    try:
        facts = write_int8(
            predictor,
            os.path.join(folder, ONNX_FILE),
            calibration,
            int8.count,
            int8.min_agreement,
            int8.settings,
        )
    except QuantizeError as e:
        raise ExportError(str(e)) from None
    config_path = os.path.join(folder, EXPORT_CONFIG)
    with open(config_path) as fh:
        config = json.load(fh)
    config["int8"] = {"file": ONNX_INT8_FILE, **facts}
    with open(config_path, "w") as fh:
        json.dump(config, fh, indent=2)
    return facts


def check_replaceable(out_dir: str) -> None:
    """Refuse, before any work, an output that an export may not replace: a file, or a folder
    holding anything an export does not write (that would be lost in the swap)."""
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir}: exists and is not a folder; pick another output folder")
    foreign = sorted(set(os.listdir(out_dir)) - set(EXPORT_FILES))
    if foreign:
        raise ExportError(
            f"{out_dir}: holds {foreign[0]}, which is not part of an export (an export replaces the "
            f"folder whole); pick a new folder or move it out"
        )


def source_epoch(path: str) -> int | None:
    """The last completed epoch of the weights in a checkpoint, an export folder or one of its
    ONNX graphs (None when the file does not say)."""
    if path.endswith(".onnx"):
        path = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        with open(os.path.join(path, EXPORT_CONFIG)) as fh:
            return json.load(fh).get("epoch")
    return load_checkpoint(path, mmap=True).get("epoch")


def provenance(name: str, local: str, predictor) -> dict:
    """What an evaluation scored, for its metrics.json: the model as given (`local`: where it
    lies on disk), its epoch, the set of weights used ('ema' or 'raw', auto resolved) and their
    fingerprint, which `camodet push` matches against the weights it uploads (an ONNX graph's
    own fingerprint instead: an int8 graph's results are not the weights')."""
    used = predictor.identity()
    return {
        "model": os.path.abspath(name) if os.path.exists(name) else name,
        "epoch": source_epoch(local),
        **{k: used[k] for k in ("weights", "weights_sha256", "graph_sha256", "tta") if k in used},
    }


def write_export(predictor, checkpoint: str, out_dir: str, onnx: bool, fp16: bool) -> dict:
    """The export's files in `out_dir` (an empty folder); config.json names the one set of weights
    it holds, 'ema' or 'raw' (auto resolved), as the Predictor loaded them."""
    from safetensors.torch import save_file

    model = predictor.model
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights_path = os.path.join(out_dir, EXPORT_WEIGHTS)
    save_file(state, weights_path)
    share(weights_path, 0o666)  # safetensors writes 0600
    config = {
        "format": EXPORT_FORMAT,
        "camodet_version": __version__,
        "model": asdict(model.cfg),
        "img_size": predictor.img_size,
        "source": os.path.abspath(checkpoint),
        "epoch": source_epoch(checkpoint),
        "weights": predictor.weights,
        # the backbone's own statistics, as the weights were trained with (0..255 scale)
        "input": {
            "layout": "NCHW RGB, (pixel 0..255 - mean) / std",
            "mean": [v * 255.0 for v in predictor.norm.mean],
            "std": [v * 255.0 for v in predictor.norm.std],
            "size": [predictor.img_size, predictor.img_size],
            "multiple_of": model.stride,  # the graph takes heights and widths that are multiples of this
        },
        "output": "probability map (N, 1, H, W) at the input size; resize to the image's size",
    }
    with open(os.path.join(out_dir, EXPORT_CONFIG), "w") as fh:
        json.dump(config, fh, indent=2)
    info = {"files": [EXPORT_WEIGHTS, EXPORT_CONFIG]}
    if onnx or fp16:  # the fp16 graph is converted from the fp32 one, traced either way
        fp32_path = os.path.join(out_dir, ONNX_FILE)
        fp32_diff = export_onnx(model, predictor.img_size, fp32_path)
    if onnx:
        info["onnx_max_abs_diff"] = fp32_diff
        info["files"].append(ONNX_FILE)
    if fp16:
        info["onnx_fp16_max_abs_diff"] = export_onnx_fp16(
            model, predictor.img_size, fp32_path, os.path.join(out_dir, ONNX_FP16_FILE)
        )
        info["files"].append(ONNX_FP16_FILE)
        if not onnx:
            os.remove(fp32_path)
    return info


def export_onnx(model: torch.nn.Module, img_size: int, path: str) -> float:
    """Export with dynamic batch, height and width (multiples of the model's stride, at least two),
    then compare with fp32 PyTorch in onnxruntime; returns the max abs difference of the
    probabilities (raises above the tolerance)."""
    onnx_runtime()
    traced = ProbabilityHead(with_static_padding(model)).eval()
    stride = model.stride
    side = max(img_size, 2 * stride)  # the example must lie in the ranges it declares
    example = torch.randn(2, 3, side, side)
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows, cols = (torch.export.Dim(n, min=2, max=8192 // stride) for n in ("height_strides", "width_strides"))
    trace_to_onnx(traced, example, path, {"image": {0: batch, 2: stride * rows, 3: stride * cols}})
    return check_against_pytorch(model, img_size, path, ONNX_TOLERANCE)


def export_onnx_fp16(model: torch.nn.Module, img_size: int, fp32_path: str, path: str) -> float:
    """The checked fp32 graph converted to half-precision weights and compute, float32 in and out,
    by ONNX Runtime's own converter (ops it keeps in fp32 get casts around them). Converting takes
    well under a second where a second torch.export trace of a half model took as long as the
    first (about a minute for the tiny test model on a 2-core CPU)."""
    import onnx  # present: the fp32 graph was written and checked with it
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True), path)
    return check_against_pytorch(model, img_size, path, FP16_TOLERANCE)


def onnx_runtime():
    """onnxruntime, or the one-line error saying which extra to install (before any tracing)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "--onnx needs onnx, onnxscript and onnxruntime: pip install 'camodet[export]'"
        ) from None
    return onnxruntime


def check_against_pytorch(model: torch.nn.Module, img_size: int, path: str, tolerance: float) -> float:
    """Max abs difference between the graph's probabilities in ONNX Runtime and fp32 PyTorch's at
    the training size and at a non-square one; above `tolerance` the graph is refused."""
    head = ProbabilityHead(model).eval()
    session = onnx_runtime().InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n, (h, w) in ((1, (img_size, img_size)), (3, (img_size, img_size + 2 * model.stride))):
        x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = head(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > tolerance:
        raise ExportError(
            f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {tolerance}); "
            f"the ONNX file is not trustworthy for this model"
        )
    return worst


def trace_to_onnx(module: torch.nn.Module, example: torch.Tensor, path: str, dynamic_shapes: dict) -> None:
    """torch.onnx.export, quiet (it narrates every pass): its loggers are restored and its output
    dropped whatever happens; a failure is one line naming the error."""
    chatter = io.StringIO()
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            torch.onnx.export(
                module,
                (example,),
                path,
                input_names=["image"],
                output_names=["probability"],
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
            )
    except Exception as e:
        if is_disk_full(e):  # not the model's fault: export() says what to do
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(
            f"{path}: torch.onnx.export could not convert this model ({type(e).__name__}: {first}); "
            f"export without --onnx/--fp16 (the safetensors export needs no tracing)"
        ) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def describe_export(info: dict, out_dir: str) -> str:
    """What `camodet export` wrote, how closely its graphs match PyTorch, and the int8 graph's
    agreement and speed."""
    text = f"wrote {', '.join(info['files'])} to {out_dir}"
    if "onnx_max_abs_diff" in info:
        text += f"; ONNX Runtime matches PyTorch within {info['onnx_max_abs_diff']:.1e}"
    if "onnx_fp16_max_abs_diff" in info:
        text += f"; the fp16 graph within {info['onnx_fp16_max_abs_diff']:.1e}"
    q = info.get("int8")
    if q:
        text += (
            f"\nint8: {q['method']} quantisation ({q['settings']}) calibrated on {q['calibration_images']} "
            f"images; on {q['held_images']} held images its masks agree with the fp32 graph's at mean IoU "
            f"{q['agreement_mean_iou']:.4f} (lowest {q['agreement_min_iou']:.4f}, threshold "
            f"{q['min_agreement']:g}); batch 1 at {q['input_size'][0]} px, {q['threads']} threads: fp32 "
            f"{q['fp32_images_per_s']:.1f} images/s, int8 {q['int8_images_per_s']:.1f} images/s "
            f"({q['speedup']:.2f}x)"
        )
    return text
