"""Publishing a model on the Hugging Face Hub: `camodet push` uploads an export
(model.safetensors, config.json) with a generated model card. Above export.py and evaluation
(the card's results table); fetching a model (`resolve`) is fetch.py, below the Predictor.
huggingface_hub is an optional extra: pip install 'camodet[hub]'."""

import json
import os
import shutil
import tempfile

import yaml

from ..models.decoders import describe_decoder
from ..options import PushOptions
from .export_format import EXPORT_CONFIG, EXPORT_WEIGHTS, model_config, read_export, weights_fingerprint
from .fetch import REPO_ID, HubError, hub_client

README = "README.md"
HUB_FILES = [EXPORT_WEIGHTS, EXPORT_CONFIG, README]


def push(opts: PushOptions, message: str | None = None) -> dict:
    """Export opts.source (checkpoint, run folder or export folder), write the model card and
    upload the three files to opts.repo_id; returns the repo URL, the commit URL and the files."""
    source, repo_id, results, datasets = opts.source, opts.repo_id, opts.results, opts.datasets
    if not REPO_ID.match(repo_id):
        raise HubError(f"{repo_id!r} is not a Hub model id; use user/name (or org/name)")
    hub = hub_client()
    from huggingface_hub.errors import HfHubHTTPError

    from ..evaluation.paper import is_super_row

    with tempfile.TemporaryDirectory(prefix="camodet-push-") as stage:
        config = stage_export(source, stage)
        table, left_off = find_results(source, results, staged_fingerprint(stage))
        # a COD10K super-class row ('COD10K-Aquatic') is a slice of COD10K, not a dataset the Hub knows
        found = [name for name in table[0] if not is_super_row(name)] if table else []
        card = model_card(repo_id, config, table, datasets or found, opts.license)
        with open(os.path.join(stage, README), "w") as fh:
            fh.write(card)
        api = hub.HfApi(endpoint=opts.endpoint, token=opts.token)
        if opts.token is None and api.token is None and hub.get_token() is None:
            raise HubError("not logged in to the Hugging Face Hub: run 'hf auth login' or set HF_TOKEN")
        try:
            repo = api.create_repo(repo_id, private=opts.private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                folder_path=stage,
                repo_id=repo_id,
                repo_type="model",
                allow_patterns=HUB_FILES,
                commit_message=message or "camodet push: weights, config and model card",
            )
        except HfHubHTTPError as e:
            raise HubError(push_refusal(repo_id, e)) from None
    return {"repo_url": str(repo), "commit_url": commit.commit_url, "files": HUB_FILES, "left_off": left_off}


def staged_fingerprint(stage: str) -> str:
    """The fingerprint of the weights about to be uploaded (export_format.weights_fingerprint)."""
    from safetensors.torch import load_file

    return weights_fingerprint(load_file(os.path.join(stage, EXPORT_WEIGHTS)))


def push_refusal(repo_id: str, error) -> str:
    """One line for an HTTP error from the Hub while pushing: the repo, the status, the fix."""
    status = getattr(error.response, "status_code", None)
    namespace = repo_id.split("/")[0]
    if status == 401:
        fix = (
            "the token was not accepted (invalid, expired or read-only); check HF_TOKEN or run "
            "'hf auth login' with a write token"
        )
    elif status == 403:
        fix = (
            f"the token needs write access to {namespace}; check HF_TOKEN or run 'hf auth login' "
            f"with a write token, or push to a namespace you own"
        )
    else:
        fix = "try again later; if it persists, check HF_TOKEN or run 'hf auth login'"
    first = (str(error) or type(error).__name__).splitlines()[0]
    said = f"the Hub answered HTTP {status}" if status else f"the push failed ({first})"
    return f"{repo_id}: {said}: {fix}"


def stage_export(source: str, out: str) -> dict:
    """model.safetensors + config.json of `source` in `out`; returns config.json's content.
    The config's 'source' becomes the checkpoint's file name: a local path has no place on the Hub."""
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, EXPORT_CONFIG)):
        read_export(source)  # refuses a folder that is not a camodet export, with the fix
        for f in (EXPORT_WEIGHTS, EXPORT_CONFIG):
            shutil.copyfile(os.path.join(source, f), os.path.join(out, f))
    else:
        from .export import export

        checkpoint = run_checkpoint(source) if os.path.isdir(source) else source
        if checkpoint is None or not os.path.isfile(checkpoint):
            raise HubError(
                f"{source}: no checkpoint or export here; pass a checkpoint file, a run folder "
                f"with one, or an export folder ('camodet export CKPT DIR')"
            )
        export(checkpoint, out)
    path = os.path.join(out, EXPORT_CONFIG)
    with open(path) as fh:
        config = json.load(fh)
    if config.get("source"):
        config["source"] = os.path.basename(config["source"])
    with open(path, "w") as fh:
        json.dump(config, fh, indent=2)
    return config


def run_checkpoint(run_dir: str) -> str | None:
    """The run's best checkpoint, else its last (the run folder owns its file names)."""
    from ..runs.folder import RunFolder

    return RunFolder(run_dir).newest_weights()


_ATTACH = "evaluate these weights ('camodet evaluate ... --out DIR'), or attach it anyway with --results FILE"


def find_results(
    source: str, explicit: str | None = None, fingerprint: str | None = None
) -> tuple[tuple[dict, str] | None, list[str]]:
    """((rows, Markdown table) or None, notices). `explicit` (evaluate's --out folder or its
    metrics.json) is taken as given. Otherwise a metrics.json of evaluate's in the source's folder
    or one level below it (runs/x/eval/metrics.json beside runs/x/best_model.pth) is taken only
    when its record says it scored weights of this `fingerprint`; each one left off gets a
    notice line that says why and how to attach it anyway."""
    if explicit:
        path = explicit if explicit.endswith(".json") else os.path.join(explicit, "metrics.json")
        if not os.path.isfile(path):
            raise HubError(
                f"--results {explicit}: no metrics.json there; write one with "
                f"'camodet evaluate ... --out DIR'"
            )
        found = read_results(path)
        if found is None:
            raise HubError(f"--results {explicit}: not a metrics.json written by 'camodet evaluate'")
        return results_table(path, found[0]), []
    folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    subs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    notices = []
    for path in (os.path.join(folder, d, "metrics.json") for d in ["", *subs]):
        found = read_results(path)
        if found is None:
            continue
        rows, scored = found
        if fingerprint and scored.get("weights_sha256") == fingerprint:
            return results_table(path, rows), notices
        notices.append(f"{path}: left off the card: {scored_words(scored)}; {_ATTACH}")
    return None, notices


def read_results(path: str) -> tuple[dict, dict] | None:
    """(rows, what was scored) of a metrics.json that `camodet evaluate --out` wrote; None for
    anything else."""
    from ..evaluation.protocol import SCORED

    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    scored = data.get(SCORED)
    rows = {k: v for k, v in data.items() if k != SCORED}
    if not rows or not all(isinstance(r, dict) and {"Sm", "MAE", "images"} <= set(r) for r in rows.values()):
        return None
    return rows, scored if isinstance(scored, dict) else {}


def scored_words(scored: dict) -> str:
    """Why results do not belong to the weights being pushed, in a few words."""
    if scored.get("preds_dir"):
        return f"it scored the maps in {scored['preds_dir']}, not these weights"
    if not scored.get("weights_sha256"):
        return "it does not record which weights it scored (written before camodet recorded it)"
    epoch = f" (epoch {scored['epoch']})" if scored.get("epoch") is not None else ""
    return f"it scored other weights: {scored.get('weights')} weights of {scored.get('model')}{epoch}"


def results_table(path: str, rows: dict) -> tuple[dict, str]:
    """(rows, the Markdown table with the legend evaluate wrote beside them)."""
    from ..evaluation.protocol import format_table

    md = os.path.join(os.path.dirname(path), "metrics.md")
    return rows, open(md).read().strip() if os.path.isfile(md) else format_table(rows)


def model_card(
    repo_id: str,
    config: dict,
    results: tuple[dict, str] | None,
    datasets: list[str],
    license: str | None = None,
) -> str:
    """README.md: the Hub's metadata block, then what the model is, its results, how to run it."""
    model = config.get("model", {})
    meta: dict = {
        "library_name": "camodet",
        "pipeline_tag": "image-segmentation",
        "tags": [
            "camouflaged-object-detection",
            "binary-segmentation",
            "camodet",
            model.get("backbone", "timm"),
        ],
    }
    if datasets:
        meta["datasets"] = list(datasets)
    if license:
        meta["license"] = license
    size = config.get("img_size", "?")
    inp = config.get("input", {})
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A camouflaged object detector (binary segmentation: the hidden animal or object against "
        f"its background) trained with camodet: timm backbone `{model.get('backbone')}`, "
        f"{describe_decoder(model_config(model))}, input {size}x{size}.",
        "",
    ]
    if results:
        lines += [
            "## Results",
            "",
            "From `camodet evaluate` (predictions resized to each ground truth's "
            "original size; the field's protocol through pysodmetrics):",
            "",
            results[1],
            "",
        ]
    lines += [
        "## Use it",
        "",
        "```bash",
        "pip install 'camodet[hub]'",
        f"camodet predict {repo_id} photos/ --out masks/    # masks, probabilities, overlays, cut-outs",
        f"camodet predict {repo_id} clip.mp4 --out video/   # mask and overlay videos",
        f"camodet app {repo_id}                             # web demo on localhost (camodet[app])",
        "```",
        "",
        "```python",
        "from camodet import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("{repo_id}")',
        'prob = predictor.predict("photo.jpg")   # HxW float32 in 0..1 at the photo\'s size',
        "mask = prob >= 0.5",
        "```",
        "",
        "## Files",
        "",
        f"- `{EXPORT_WEIGHTS}`: the weights (safetensors: no code runs on load).",
        f"- `{EXPORT_CONFIG}`: architecture, input size, normalisation (all it takes to rebuild it).",
        "",
        "Input: RGB resized to {0}x{0}, `(pixel - mean) / std` with mean {1} and std {2} on the "
        "0..255 scale; output: a probability map, resized back to the image.".format(
            size, _round(inp.get("mean")), _round(inp.get("std"))
        ),
        "",
    ]
    return "\n".join(lines)


def _round(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]" if values else "(ImageNet's)"
