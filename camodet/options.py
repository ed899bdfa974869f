"""Every command's options but train's (TrainConfig, in config.py), as typed dataclasses: the
single source of the command line (cli.py builds every parser from them through fields.py), of
--config YAML files and of the CLI reference in README. A setting's type, choices and range are
declared on its field and checked by the gate; a class's `validate` holds only the rules between
its settings. The inference commands (evaluate, predict, export, app) share InferenceOptions.
No torch here."""

import os
from dataclasses import dataclass

from .config import TrainConfig
from .errors import ConfigError
from .fields import check_fields, device_name, opt, section, workers

WEIGHT_CHOICES = ("auto", "ema", "raw")
DEFAULT_CALIBRATION_COUNT = 200  # --int8: photos to calibrate on
DEFAULT_MIN_AGREEMENT = 0.97  # --int8: the lowest mean IoU between the int8 and fp32 graphs' masks


@dataclass
class InferenceOptions:
    """How a trained model predicts: its weights, test-time augmentation, batches and device."""

    weights: str = opt(
        "auto",
        "auto: what the run validated with (the EMA weights of an EMA run, in any of its checkpoints); "
        "ema or raw; an export folder holds one set",
        choices=list(WEIGHT_CHOICES),
    )
    tta: list[str] = opt([], "test-time augmentation: flip and/or scales=0.75,1,1.25", metavar="SPEC")
    batch_size: int = opt(8, "images per forward pass", min=1)
    num_workers: workers = opt(2, "data-loader worker processes that read the images, or auto", min=0)
    device: device_name = opt("auto", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class SynthOptions:
    """`camodet synth`: write a synthetic camouflage dataset (COD10K-v3 layout)."""

    out: str = opt(None, "output folder", positional=True)
    train: int = opt(200, "training images", min=1)
    test: int = opt(50, "test images", min=0)
    seed: int = opt(0, "random seed (the same seed writes the same files)")
    noncam_every: int = opt(10, "every N-th image is a NonCAM background (0: none)", min=0)
    min_size: int = opt(160, "shortest side of an image, in pixels", min=32)
    max_size: int = opt(320, "longest side of an image, in pixels", min=32)
    workers: int = opt(0, "processes that generate images (0: one per core)", min=0)

    def validate(self) -> None:
        check_fields(self)
        if self.min_size > self.max_size:
            raise ConfigError(
                f"synth sizes must satisfy 32 <= --min-size <= --max-size "
                f"(got {self.min_size}, {self.max_size})"
            )


@dataclass
class DataCheckOptions:
    """`camodet data check`: report layout, counts, sizes and bad files."""

    path: str = opt(None, "dataset root", positional=True)
    headers_only: bool = opt(False, "read the files' headers only: do not decode every file")
    json: bool = opt(False, "print the report as JSON")


@dataclass
class EvaluateOptions:
    """`camodet evaluate`: the field's metrics on test splits, at original resolution."""

    checkpoint: str | None = opt(
        None, "checkpoint, export folder or Hub id (omit with --preds-dir)", positional=True, nargs="?"
    )
    dataset_path: list[str] = opt([], "dataset root(s) whose test splits are scored", required=True)
    out: str | None = opt(None, "folder for metrics.json/.csv/.md")
    save_preds: str | None = opt(None, "write 8-bit probability maps as DIR/<dataset>/<stem>.png")
    preds_dir: str | None = opt(None, "score existing maps in DIR/<dataset>/<stem>.png instead of a model")
    curves: bool = opt(
        False, "save PR, F- and E-measure curves (256 thresholds) and their plots in OUT/curves/"
    )
    format: str = opt(
        "markdown",
        "latex: S-alpha, weighted F, mean E, MAE to 3 decimals, as papers print them",
        choices=["markdown", "latex"],
    )
    minmax: bool = opt(
        False,
        "min-max normalise each map before every metric (for papers that do); stated in the table's legend",
    )
    method: str | None = opt(None, "name of the model in tables and plots (default: its folder's name)")
    worst: int | None = opt(
        None,
        "show the K images with the lowest IoU (image | ground truth | prediction) in OUT/worst.png",
        min=1,
        metavar="K",
    )
    workers: int = opt(
        0,
        "processes for the metrics (their CPU work at original resolution dominates); the table is "
        "the one of a single process. Under torchrun/srun each process scores its share",
        min=0,
        metavar="N",
    )
    inference: InferenceOptions = section(InferenceOptions, flatten=True)

    def validate(self) -> None:
        check_fields(self)
        if (self.checkpoint is None) == (self.preds_dir is None):
            raise ConfigError("evaluate needs a checkpoint (or export folder) or --preds-dir DIR, not both")
        if self.curves and not self.out:
            raise ConfigError("--curves writes files: add --out DIR (the curves go to DIR/curves/)")
        if self.worst is not None and not self.out:
            raise ConfigError("--worst writes a panel: add --out DIR (it goes to DIR/worst.png)")
        if self.save_preds and os.path.exists(self.save_preds) and not os.path.isdir(self.save_preds):
            raise ConfigError(
                f"--save-preds {self.save_preds}: exists and is not a folder; give a folder for "
                f"DIR/<dataset>/<stem>.png"
            )


@dataclass
class PredictOptions:
    """`camodet predict`: masks, probability maps, overlays and cut-outs for your images; mask and
    overlay videos for videos and frame folders."""

    checkpoint: str = opt(None, "checkpoint, export folder or Hub model id (user/name)", positional=True)
    inputs: list[str] = opt([], "image or video files, folders or glob patterns", positional=True, nargs="+")
    out: str = opt(None, "output folder (masks/, probs/, overlays/, cutouts/)", required=True)
    threshold: float = opt(0.5, "probability that counts as object", above=0, below=1)
    frames: bool = opt(
        False, "treat each folder as video frames in frame-number order (one clip per sequence)"
    )
    fps: float = opt(25.0, "frame rate of the videos made from --frames folders", above=0)
    smooth: int = opt(
        1, "videos: average each frame's probabilities with its neighbours over K frames", min=1, metavar="K"
    )
    save_frames: bool = opt(False, "videos: also write masks/ and probs/ PNGs per frame beside the videos")
    runtime: str = opt(
        "torch",
        "onnx: run an export folder's model.onnx in ONNX Runtime on the CPU (or name one of its graphs, "
        "e.g. DIR/model_int8.onnx, as the model; a .onnx model always runs in ONNX Runtime)",
        choices=["torch", "onnx"],
    )
    skip_existing: bool = opt(
        False,
        "leave inputs whose outputs are already in --out (OUT/manifest.json keys outputs to their "
        "inputs; files are written whole): a rerun after an interrupted run does only the rest",
    )
    inference: InferenceOptions = section(InferenceOptions, flatten=True, batch_size=4)


@dataclass
class ExportOptions:
    """`camodet export`: model.safetensors + config.json (and --onnx model.onnx)."""

    checkpoint: str = opt(None, "training checkpoint", positional=True)
    out_dir: str = opt(None, "export folder (replaced whole, or created)", positional=True)
    onnx: bool = opt(
        False,
        "also write model.onnx (pip install 'camodet[export]'); dynamic batch, height and width "
        "(multiples of the model's stride: 32, or 64 for --decoder zoom)",
    )
    fp16: bool = opt(
        False, "also write model_fp16.onnx: half-precision weights and compute for GPUs, float32 in and out"
    )
    int8: bool = opt(
        False,
        "also write model_int8.onnx for CPUs: ONNX Runtime's static quantisation calibrated on "
        "--calibration photos, refused below --min-agreement with the fp32 graph (implies --onnx)",
    )
    calibration: list[str] = opt([], "--int8: folder(s), glob(s) or files of photos", metavar="IMAGES")
    calibration_count: int = opt(
        DEFAULT_CALIBRATION_COUNT,
        "--int8: photos to calibrate on (others are held out to check the graph)",
        min=1,
    )
    min_agreement: float = opt(
        DEFAULT_MIN_AGREEMENT,
        "--int8: lowest mean IoU between the int8 and fp32 graphs' masks on held photos",
        above=0,
        max=1,
    )
    inference: InferenceOptions = section(InferenceOptions, only=("weights",), flatten=True)

    def validate(self) -> None:
        check_fields(self)
        if self.int8 != bool(self.calibration):
            raise ConfigError(
                "--int8 and --calibration IMAGES go together (the photos calibrate the int8 graph)"
            )


@dataclass
class PushOptions:
    """`camodet push`: publish a model on the Hugging Face Hub: model.safetensors, config.json and a
    model card (pip install 'camodet[hub]')."""

    source: str = opt(None, "checkpoint, run folder (its best checkpoint) or export folder", positional=True)
    repo_id: str = opt(None, "user/name on the Hub (created if missing)", positional=True)
    results: str | None = opt(
        None,
        "folder (or metrics.json) of 'camodet evaluate --out' for the card's table (default: one found "
        "beside the run)",
    )
    datasets: list[str] | None = opt(
        None, "datasets named in the card's metadata (default: the table's)", nargs="+"
    )
    license: str | None = opt(None, "license in the card's metadata, e.g. mit or cc-by-nc-4.0")
    private: bool = opt(False, "create the repository private")
    token: str | None = opt(None, "Hub token (default: HF_TOKEN or 'hf auth login')")
    endpoint: str | None = opt(None, "Hub address (default: HF_ENDPOINT or huggingface.co)")


@dataclass
class AppOptions:
    """`camodet app`: web demo on localhost: drop a photo, see mask, overlay and cut-out (pip install
    'camodet[app]')."""

    model: str = opt(None, "checkpoint, export folder or Hub model id (user/name)", positional=True)
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: the whole network)")
    port: int = opt(7860, "port to listen on", min=1, max=65535)
    title: str | None = opt(None, "name shown on the page (default: the model's folder or id)")
    inference: InferenceOptions = section(InferenceOptions, only=("weights", "device"), flatten=True)


@dataclass
class InspectOptions:
    """`camodet inspect`: verify a checkpoint: position, metrics, config, NaN/Inf tensors (exit 0
    clean, 1 non-finite, 2 unreadable)."""

    checkpoint: str = opt(None, "checkpoint to verify", positional=True)
    json: bool = opt(False, "print the report as JSON")


@dataclass
class ReportOptions:
    """`camodet report`: report.html (curves, events, advice, predictions) for a run folder."""

    run_dir: str = opt(None, "run folder", positional=True)
    predictions: bool = opt(True, "the grid of validation predictions (--no-predictions: skip it)")


@dataclass
class SummaryOptions:
    """`camodet model summary`: parameters by part and GFLOPs of the model train builds.

    Train's own model settings and image size, with its defaults: a train --config file works too."""

    train: TrainConfig = section(TrainConfig, flatten=True, only=("model", "data.img_size"))
    json: bool = opt(False, "print the summary as JSON")


@dataclass
class PlanSettings:
    """What `camodet plan` measures and aims for."""

    gpu_memory: str | None = opt(None, "memory budget, e.g. 16GB (default: the GPU's, or the CPU's RAM)")
    effective_batch: int = opt(16, "images per optimizer step to reach", min=1)
    lr_scaling: str = opt(
        "linear",
        "scale the configured LRs with the effective batch: linear or square root",
        choices=["linear", "sqrt"],
    )
    candidates: list[int] = opt([1, 2, 4, 8, 16], "micro-batches to try", min=1)
    steps: int = opt(2, "timed steps per measurement (after one warm-up)", min=1)
    num_images: int = opt(3600, "training images when no --dataset-path is given", min=1)
    out_dir: str = opt("plans", "where the three YAML files go")


@dataclass
class PlanOptions:
    """`camodet plan`: measure steps, then choose micro-batch, accumulation and LR (three profiles,
    each a YAML for train --config).

    Train's settings, and what to measure."""

    train: TrainConfig = section(TrainConfig, flatten=True)
    plan: PlanSettings = section(PlanSettings, flatten=True)


@dataclass
class RangeTestSettings:
    """What `camodet tune lr` sweeps."""

    steps: int = opt(100, "optimizer steps of the test (fewer if it diverges)", min=10)
    start_lr: float = opt(1e-7, "LR of the first step", above=0)
    end_lr: float = opt(1.0, "LR of the last step", above=0)
    out: str = opt("lr_range", "folder for lr_range.png, .yaml and .json")

    def validate(self) -> None:
        if not self.start_lr < self.end_lr:
            raise ConfigError(
                f"--start-lr ({self.start_lr:g}) must be positive and below --end-lr ({self.end_lr:g})"
            )


@dataclass
class TuneLROptions:
    """`camodet tune lr`: LR range test from the run's weights in the stage it would train next:
    suggested LR, plot and YAML (nothing in the run folder changes).

    Train's settings (the stage it would train next), and the test's."""

    train: TrainConfig = section(TrainConfig, flatten=True)
    test: RangeTestSettings = section(RangeTestSettings, flatten=True)


@dataclass
class SweepSettings:
    """How a sweep worker searches: the study, the pruner and sampler, how many trials it runs."""

    space: str | None = opt(
        None, "YAML search space: dotted settings -> {low, high, log} or a list of choices"
    )
    trials: int = opt(10, "trials this worker runs", min=1)
    out: str = opt("sweep", "sweep folder: trials/trial_N run folders, sweep.db, summary.html")
    storage: str | None = opt(
        None, "Optuna storage URL (default: sqlite:///OUT/sweep.db; postgresql://... for several machines)"
    )
    study: str = opt("camodet", "study name in the storage")
    pruner: str = opt("median", "median, hyperband or none", choices=["median", "hyperband", "none"])
    sampler: str = opt("tpe", "tpe or random", choices=["tpe", "random"])
    sampler_seed: int | None = opt(None, "seed of the sampler (leave unset with several workers)")
    prune_startup: int = opt(3, "trials that finish before the median pruner acts", min=0)
    prune_warmup: int = opt(1, "epochs every trial trains before it can be pruned", min=1)
    heartbeat: float = opt(
        60.0,
        "seconds between a worker's heartbeats; a trial silent for two is failed and queued again",
        min=1,
    )
    summary: bool = opt(False, "print the trials and the best command, write summary.html")


@dataclass
class SweepOptions:
    """`camodet sweep`: hyperparameter search with Optuna: each trial a training run, pruned on
    validation IoU (pip install 'camodet[tune]').

    The trials' train settings, and the search's."""

    train: TrainConfig = section(TrainConfig, flatten=True)
    search: SweepSettings = section(SweepSettings, flatten=True)
