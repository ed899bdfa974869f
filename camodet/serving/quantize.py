"""int8 ONNX for CPUs: ONNX Runtime's static quantisation of model.onnx, calibrated on the
user's photos (preprocessed as the Predictor does), then checked against the fp32 graph on
held photos: mask agreement (mean IoU) and the speed of both. ONNX Runtime's own quantiser
does the work; this module chooses its settings, feeds it images and judges the result."""

import contextlib
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..options import DEFAULT_CALIBRATION_COUNT, DEFAULT_MIN_AGREEMENT

ONNX_INT8_FILE = "model_int8.onnx"
HELD_FRACTION, MAX_HELD = 0.2, 32  # photos kept out of calibration to check the int8 graph on


class QuantizeError(RuntimeError):
    """The int8 graph could not be made or was refused; the message is one line."""


@dataclass(frozen=True)
class Int8Settings:
    """How the graph is quantised. QDQ with per-channel weights is ONNX Runtime's recommended
    CPU format; `keep_float` names Conv nodes left in fp32 ('ends': the first and the last)."""

    quant_format: str = "qdq"  # qdq | qoperator
    per_channel: bool = True
    keep_float: str = "none"  # none | ends
    calibrate: str = "minmax"  # minmax | percentile
    # x86 AVX2/AVX-512 CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, whose int16 sums
    # saturate (ONNX Runtime's quantisation docs): 7-bit weights (reduce_range) or uint8 weights avoid it.
    reduce_range: bool = False
    weight_type: str = "int8"  # int8 | uint8
    activation_type: str = "uint8"  # uint8 | int8 (S8S8: ONNX Runtime's first choice for QDQ)

    def __post_init__(self):
        # ONNX Runtime has no static format for these; quantize() would quietly fall back to dynamic
        if (self.activation_type, self.weight_type) == ("int8", "uint8"):
            raise QuantizeError(
                "int8 activations with uint8 weights: ONNX Runtime has no such format (use s8s8 or u8u8)"
            )

    def describe(self) -> str:
        kept = ", first and last conv in fp32" if self.keep_float == "ends" else ""
        channel = "per-channel" if self.per_channel else "per-tensor"
        bits = "7-bit " if self.reduce_range else ""
        return (
            f"{self.quant_format.upper()}, {channel} {bits}{self.weight_type} weights, "
            f"{self.activation_type} activations ({self.calibrate}){kept}"
        )


def split_images(paths: list[str], count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(calibration, held): a seeded shuffle; the held photos (a fifth, at most MAX_HELD, at least
    one) never calibrate, so the agreement is measured on photos the quantiser did not see."""
    if len(paths) < 2:
        raise QuantizeError(
            f"--calibration: found {len(paths)} image(s), need at least 2 (some calibrate, some are "
            f"held out to check the int8 graph); point it at a folder or glob of photos"
        )
    order = sorted(paths)
    random.Random(seed).shuffle(order)
    held = max(1, min(MAX_HELD, round(len(order) * HELD_FRACTION)))
    return order[held : held + count], order[:held]


def network_inputs(predictor, paths: list[str]) -> list[np.ndarray]:
    """(1, 3, S, S) float32 inputs, read and preprocessed exactly as Predictor.predict does."""
    from .predictor import as_rgb

    return [predictor.prepare(as_rgb(p)).numpy()[None] for p in paths]


class ImageFeed:
    """onnxruntime's CalibrationDataReader protocol over preprocessed inputs (duck-typed: its
    base class only declares get_next)."""

    def __init__(self, inputs: list[np.ndarray]):
        self.items = iter([{"image": x} for x in inputs])

    def get_next(self):
        return next(self.items, None)


def float_convs(model_path: str, keep_float: str) -> list[str]:
    """Names of the Conv nodes to leave in fp32 (the first and the last for 'ends')."""
    if keep_float == "none":
        return []
    import onnx

    convs = [n.name for n in onnx.load(model_path).graph.node if n.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


def quantize(fp32_path: str, out_path: str, calibration: list[np.ndarray], settings: Int8Settings) -> str:
    """Write the int8 graph; returns the method used: 'static' (calibrated activations), or
    'dynamic' where static quantisation does not apply to this graph (the reason is kept)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    weights = QuantType.QUInt8 if settings.weight_type == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory() as tmp, quiet_root_logger():
        prepared = os.path.join(tmp, "prepared.onnx")
        prepare(fp32_path, prepared)
        try:
            quantize_static(
                prepared,
                out_path,
                ImageFeed(calibration),
                quant_format=QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=settings.per_channel,
                activation_type=QuantType.QInt8 if settings.activation_type == "int8" else QuantType.QUInt8,
                weight_type=weights,
                reduce_range=settings.reduce_range,
                calibrate_method=(
                    CalibrationMethod.Percentile
                    if settings.calibrate == "percentile"
                    else CalibrationMethod.MinMax
                ),
                nodes_to_exclude=float_convs(prepared, settings.keep_float),
            )
            return "static"
        except Exception as e:  # any failure of the static path: the dynamic one needs no calibration
            from onnxruntime.quantization import quantize_dynamic

            first = (str(e).strip().splitlines() or [""])[0][:120]
            quantize_dynamic(
                prepared,
                out_path,
                weight_type=weights,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
            )
            return f"dynamic (static quantisation failed: {type(e).__name__}: {first})"


@contextlib.contextmanager
def quiet_root_logger():
    """The quantiser warns through the root logger once per calibration image about shapes it
    handles anyway ('Axis 1 is out-of-range for weight ...'); the export prints its own summary."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def prepare(fp32_path: str, out_path: str) -> None:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation), which
    lets the quantiser see every tensor's shape; the graph as it is where that step fails."""
    import shutil

    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(fp32_path, out_path, skip_symbolic_shape=False)
    except Exception:  # an optimisation step, not a requirement
        shutil.copyfile(fp32_path, out_path)


def session(path: str, threads: int):
    """A CPU session; both graphs get the same thread count so their speeds compare."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # quantised graphs warn about every QDQ pair it folds
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_all(sess, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Probabilities for each input at batch 1, and images/s (best of two passes, after a warm-up)."""
    sess.run(None, {"image": inputs[0]})
    best, outs = float("inf"), []
    for _ in range(2):
        started = time.perf_counter()
        outs = [sess.run(None, {"image": x})[0] for x in inputs]
        best = min(best, time.perf_counter() - started)
    return outs, len(inputs) / max(best, 1e-9)


def mask_iou(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of two probability maps binarised at `threshold` (both empty: 1, as the protocol scores it)."""
    ma, mb = a >= threshold, b >= threshold
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def compare(fp32_path: str, int8_path: str, held: list[np.ndarray], threads: int) -> dict:
    """Agreement (mean IoU of the binarised masks) and images/s of both graphs on the held inputs."""
    want, fp32_speed = run_all(session(fp32_path, threads), held)
    got, int8_speed = run_all(session(int8_path, threads), held)
    ious = [mask_iou(w, g) for w, g in zip(want, got)]
    return {
        "agreement_mean_iou": float(np.mean(ious)),
        "agreement_min_iou": float(np.min(ious)),
        "max_abs_prob_diff": float(max(np.abs(w - g).max() for w, g in zip(want, got))),
        "fp32_images_per_s": fp32_speed,
        "int8_images_per_s": int8_speed,
        "speedup": int8_speed / max(fp32_speed, 1e-9),
    }


def write_int8(
    predictor,
    fp32_path: str,
    images: list[str],
    count: int = DEFAULT_CALIBRATION_COUNT,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    settings: Int8Settings = Int8Settings(),
    threads: int | None = None,
) -> dict:
    """model_int8.onnx beside `fp32_path`, calibrated on `count` of `images` and checked on the
    held rest; refused (QuantizeError, the file removed) when the agreement is below
    `min_agreement`. Returns the facts an export records in its config.json."""
    import torch

    calibration, held = split_images(images, count)
    out_path = os.path.join(os.path.dirname(fp32_path), ONNX_INT8_FILE)
    method = quantize(fp32_path, out_path, network_inputs(predictor, calibration), settings)
    threads = threads or torch.get_num_threads()
    facts = compare(fp32_path, out_path, network_inputs(predictor, held), threads)
    facts.update(
        method=method,
        settings=settings.describe(),
        calibration_images=len(calibration),
        held_images=len(held),
        input_size=[predictor.img_size, predictor.img_size],
        threads=threads,
        min_agreement=min_agreement,
    )
    if not facts["agreement_mean_iou"] >= min_agreement:
        os.unlink(out_path)
        raise QuantizeError(
            f"{ONNX_INT8_FILE}: its masks agree with the fp32 graph's at mean IoU "
            f"{facts['agreement_mean_iou']:.4f} on {len(held)} held images, below --min-agreement "
            f"{min_agreement:g}; nothing was written (calibrate on more photos like the deployment's, "
            f"or lower --min-agreement)"
        )
    return facts
