"""`camodet predict`: masks for your own photos. For each readable input, at its
original size: a binary mask, the probability map, an overlay and an RGBA cut-out; OUT/manifest.json
says which input each output belongs to and what made them."""

import glob
import json
import os
import tempfile
import time

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.io import IMAGE_EXTS, DataError, read_image
from ..data.normalization import Normalization
from ..data.transforms import resize
from ..errors import ConfigError
from ..evaluation.metrics import to_uint8
from ..launch import Dist, Shard, broadcast_object, resolve_workers
from ..options import PredictOptions
from ..staging import share

OUTPUTS = ("masks", "probs", "overlays", "cutouts")
TINT = np.array([255, 64, 0], dtype=np.float32)  # overlay colour (orange): visible on green and brown scenes


def expand_patterns(inputs: list[str], folders: bool = False) -> list[str]:
    """The inputs, each glob pattern (an input that is not an existing path) replaced by its
    matching files, sorted (and matching folders, with folders=True); a pattern that matches
    nothing stays as it is, so the caller reports it. Repeated paths are kept once."""
    out = []
    for item in inputs:
        matches = [] if os.path.exists(item) else sorted(glob.glob(item, recursive=True))
        matches = [p for p in matches if os.path.isfile(p) or (folders and os.path.isdir(p))]
        out += matches or [item]
    return list(dict.fromkeys(out))


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (their images, sorted) and glob patterns -> (image paths, [(input, problem)])."""
    paths, problems = [], []
    for item in expand_patterns(inputs):
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
            if not found:
                problems.append((item, "folder holds no images"))
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            problems.append((item, "no such file, folder or matching pattern"))
    return list(dict.fromkeys(paths)), problems


class ImageFiles(Dataset):
    """Reads in workers; an unreadable file yields its error instead of stopping the run."""

    def __init__(self, paths: list[str], img_size: int, norm: Normalization):
        self.paths, self.img_size, self.norm = paths, img_size, norm

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            image = read_image(self.paths[i])
        except DataError as e:  # listed as "skipped PATH: why"; predict skips without being asked
            return {"index": i, "error": e.reason.removeprefix(f"{self.paths[i]}: ")}
        return {
            "index": i,
            "image": image,
            "input": torch.from_numpy(self.norm.apply(resize(image, self.img_size))),
        }


def collate_files(items: list[dict]) -> list[dict]:
    return items


def unique_names(names: list[str], reserved: set[str] = frozenset()) -> list[str]:
    """The names, each repeat given the first free numeric suffix ('x', 'x_2', 'x_3'), so no two
    outputs share a name (also the clips' folders in video.py). An input's own name is never
    handed to another's repeat: 'x', 'x', 'x_2' -> 'x', 'x_3', 'x_2'; `reserved` names (earlier
    runs' outputs) count as repeats."""
    taken, seen, out = set(names) | reserved, set(reserved), []
    for name in names:
        if name in seen:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out


def unique_stems(paths: list[str], reserved: set[str] = frozenset()) -> list[str]:
    """File stems, with a numeric suffix where two inputs share one, or one is reserved."""
    return unique_names([os.path.splitext(os.path.basename(p))[0] for p in paths], reserved)


def output_paths(out_dir: str, stem: str) -> list[str]:
    """The four files of one input, in the order they are written."""
    return [
        os.path.join(out_dir, "masks", stem + ".png"),
        os.path.join(out_dir, "probs", stem + ".png"),
        os.path.join(out_dir, "overlays", stem + ".jpg"),
        os.path.join(out_dir, "cutouts", stem + ".png"),
    ]


def save_atomically(image: Image.Image, path: str, **options) -> None:
    """Write to a temporary name beside `path`, then rename: a process killed mid-write leaves
    no half file under the real name (so --skip-existing can trust what is there)."""
    partial = os.path.join(os.path.dirname(path), f".partial-{os.getpid()}-{os.path.basename(path)}")
    image.save(partial, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()], **options)
    os.replace(partial, path)


def write_outputs(image: np.ndarray, prob: np.ndarray, threshold: float, out_dir: str, stem: str) -> None:
    mask = prob >= threshold
    masks, probs, overlays, cutouts = output_paths(out_dir, stem)
    save_atomically(Image.fromarray((mask * 255).astype(np.uint8)), masks)
    save_atomically(Image.fromarray(to_uint8(prob)), probs)
    save_atomically(Image.fromarray(overlay_image(image, mask)), overlays, quality=92)
    save_atomically(Image.fromarray(cutout_image(image, prob, mask), "RGBA"), cutouts)


def overlay_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image with the mask tinted and its outline drawn (also the video overlay and the app's)."""
    overlay = image.astype(np.float32)
    overlay[mask] = 0.55 * overlay[mask] + 0.45 * TINT
    overlay = overlay.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 0), max(1, round(max(image.shape[:2]) / 400)))
    return overlay


def cutout_image(image: np.ndarray, prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HxWx4 RGBA: soft edge inside the mask, transparent outside."""
    return np.dstack([image, to_uint8(prob * mask)])


MANIFEST, MANIFEST_FORMAT = "manifest.json", "camodet-predict-v1"


class Manifest:
    """OUT/manifest.json: each input's output name, keyed to the input's absolute path with its
    size and mtime (an input changed since is not done), and the settings that made them. Names
    stay with their inputs over reruns whatever else is listed. Saved whole (temp + os.replace)
    before a run writes any output, holding every input of the run: outputs are written whole
    too, so a killed run leaves nothing it does not account for, and an input is done when its
    entry is current and its four files are there."""

    def __init__(self, folder: str, settings: dict, inputs: dict[str, dict]):
        self.folder, self.settings, self.inputs = folder, settings, inputs

    @classmethod
    def open(cls, folder: str, settings: dict) -> "Manifest":
        """The folder's manifest (a new one for a new folder). Refused: a folder holding outputs
        of other settings, or outputs that no manifest accounts for."""
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"--out {folder}: exists and is not a folder; pick another output folder")
        path = os.path.join(folder, MANIFEST)
        record = {"settings": settings, "inputs": {}}
        if os.path.isfile(path):
            try:
                with open(path) as fh:
                    record = json.load(fh)
                whole = isinstance(record.get("settings"), dict) and isinstance(record.get("inputs"), dict)
                found = record.get("format") if whole else None
            except (OSError, ValueError, AttributeError):
                found = None
            if found != MANIFEST_FORMAT:
                raise ConfigError(f"{path}: not a camodet predict manifest; predict into a new --out folder")
        manifest = cls(folder, settings, record["inputs"])
        manifest.refuse_other(record["settings"])
        manifest.refuse_unaccounted_outputs()
        return manifest

    def refuse_other(self, settings: dict) -> None:
        for key in sorted(set(settings) | set(self.settings)):
            there, now = settings.get(key), self.settings.get(key)
            if there != now:
                raise ConfigError(
                    f"{self.folder}: holds the outputs of another model or settings ({key} {there!r} "
                    f"there, {now!r} now; see {MANIFEST}); predict into a new --out folder, or rerun "
                    f"with those settings"
                )

    def refuse_unaccounted_outputs(self) -> None:
        stems = {entry["stem"] for entry in self.inputs.values()}
        for sub in OUTPUTS:
            folder = os.path.join(self.folder, sub)
            names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            for name in names:  # hidden ones are partial writes, never outputs
                if not name.startswith(".") and os.path.splitext(name)[0] not in stems:
                    raise ConfigError(
                        f"{self.folder}: holds {sub}/{name}, an output that no {MANIFEST} accounts for "
                        f"(an older camodet's, or put there by hand); predict into a new --out folder "
                        f"or move the old outputs out"
                    )

    def plan(self, paths: list[str]) -> tuple[list[str], list[bool]]:
        """(each input's output stem, whether its outputs are there and current), saved: an input
        keeps the stem of earlier runs, a new one gets a name no other input has had; the old
        outputs of an input changed since are removed first."""
        keys = [os.path.abspath(p) for p in paths]
        new = list(dict.fromkeys(k for k in keys if k not in self.inputs))
        reserved = {entry["stem"] for entry in self.inputs.values()}
        for key, stem in zip(new, unique_stems(new, reserved)):
            self.inputs[key] = {"stem": stem}
        done = []
        for key in keys:
            entry, now = self.inputs[key], input_signature(key)
            files = output_paths(self.folder, entry["stem"])
            current = {k: entry.get(k) for k in now} == now
            if not current:
                for f in files:
                    if os.path.exists(f):
                        os.remove(f)
            done.append(current and all(map(os.path.exists, files)))
            entry.update(now)
        self.save()
        return [self.inputs[k]["stem"] for k in keys], done

    def save(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        record = {"format": MANIFEST_FORMAT, "settings": self.settings, "inputs": self.inputs}
        fd, partial = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            share(partial, 0o666)  # mkstemp's 0600
            os.replace(partial, os.path.join(self.folder, MANIFEST))
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise


def input_signature(path: str) -> dict:
    """Size and mtime: an input whose file changed since its outputs were written is not done."""
    try:
        st = os.stat(path)
    except OSError:  # gone since it was listed: reported when it is read
        return {"size": None, "mtime_ns": None}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def plan_outputs(out_dir: str, paths: list[str], settings: dict, d: Dist) -> tuple[list[str], list[bool]]:
    """Manifest.plan, by rank 0 alone (one writer of the manifest); every process gets its plan,
    or its refusal."""
    plan = None
    if d.is_main:
        try:
            plan = Manifest.open(out_dir, settings).plan(paths)
        except ConfigError as e:
            plan = str(e)
    plan = broadcast_object(plan, d)
    if isinstance(plan, str):
        raise ConfigError(plan)
    return plan


def predict_files(predictor, inputs: list[str], opts: PredictOptions, d: Dist = Dist()) -> dict:
    """Run over every input (this process's share of them: blocks of a batch, so the batches
    are a single process's) into opts.out; returns counts, timing and the inputs that could not be
    read. opts.skip_existing: inputs whose four outputs are there and current are not predicted
    again. The outputs are named and recorded in OUT/manifest.json (see Manifest) before any is
    written; a folder holding outputs of another model or settings is refused."""
    out_dir, threshold, skip_existing = opts.out, opts.threshold, opts.skip_existing
    batch_size = opts.inference.batch_size
    num_workers = resolve_workers(opts.inference.num_workers, predictor.device.type)
    paths, listed = expand_inputs(inputs)
    problems = listed if d.is_main else []  # every process lists the inputs; one reports it
    stems, done = plan_outputs(out_dir, paths, {**predictor.identity(), "threshold": threshold}, d)
    for sub in OUTPUTS:
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    mine = Shard.of(d).indices(len(paths), batch_size)
    todo = [i for i in mine if not (skip_existing and done[i])]
    loader = DataLoader(
        ImageFiles([paths[i] for i in todo], predictor.img_size, predictor.norm),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_files,
    )
    done, start = 0, time.time()
    for items in tqdm(loader, desc="predict", unit="batch", disable=None if len(todo) > batch_size else True):
        good = [it for it in items if "error" not in it]
        problems += [(paths[todo[it["index"]]], it["error"]) for it in items if "error" in it]
        if not good:
            continue
        batch = torch.stack([it["input"] for it in good])
        probs = predictor.probabilities(batch, [it["image"].shape[:2] for it in good])
        for it, prob in zip(good, probs):
            write_outputs(it["image"], prob.cpu().numpy(), threshold, out_dir, stems[todo[it["index"]]])
            done += 1
    seconds = time.time() - start
    return {
        "written": done,
        "existing": len(mine) - len(todo),
        "inputs": len(paths),
        "problems": problems,
        "seconds": seconds,
        "images_per_s": done / max(seconds, 1e-9),
    }


def describe_files(parts: list[dict], out_dir: str, processes: int) -> str:
    """predict_files' outcome of every process, in one line."""
    written, existing = sum(p["written"] for p in parts), sum(p["existing"] for p in parts)
    return (
        f"wrote masks, probs, overlays and cutouts of {written} of {parts[0]['inputs']} images "
        f"to {out_dir} ({sum(p['images_per_s'] for p in parts):.1f} images/s"
        + (f" in {processes} processes" if processes > 1 else "")
        + ")"
        + (f"; {existing} already there (--skip-existing)" if existing else "")
    )
