"""`camodet predict` on videos and frame folders: a mask video and an overlay video at the
input's size and frame rate, per-frame PNGs on request, optional temporal smoothing of the
probabilities (a centred moving average over K frames). Video IO is OpenCV's."""

import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.io import IMAGE_EXTS, DataError, read_image
from ..evaluation.metrics import to_uint8
from ..launch import Shard
from ..options import PredictOptions
from .predict import overlay_image, save_atomically, unique_names

VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")
DEFAULT_FPS = 25.0  # for frame folders, and videos whose header holds no rate
FOURCC = "mp4v"  # in every OpenCV wheel (H.264 is not); plays in browsers' and desktop players


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


# A date and/or time of day ending a frame name ('2023-05-01_12-00-59', '20230501T120059.250',
# 'cam_12-00-59'): all of it counts, not just the seconds, or a sequence splits at every minute.
# One separator throughout each part, and not inside a word, so 'clip_12_0001' (clip 12, frame 1)
# and 'video10_0001' stay numbered frames of their clips.
_DATE = r"\d{4}(?P<d>[-_.]?)\d{2}(?P=d)\d{2}"
_TIME = r"\d{2}(?P<t>[-_.:]?)\d{2}(?P=t)\d{2}(?:[.,]\d{1,6})?"
_STAMPS = [re.compile(rf"(?<![^\W_]){p}$") for p in (rf"{_DATE}[ T_-]?{_TIME}", _DATE, _TIME)]


def sequence_name(stem: str) -> str:
    """The sequence a frame belongs to: its name without the trailing frame number or timestamp
    ('davis_blackswan_00005' -> 'davis_blackswan', '2023-05-01_12-00-59' -> '')."""
    m = next((m for p in _STAMPS if (m := p.search(stem))), None) or re.search(r"\d+$", stem)
    return (stem[: m.start()] if m else stem).rstrip("_-. ")


def natural_key(name: str) -> list:
    """'f10.jpg' after 'f9.jpg': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass
class Clip:
    """One sequence of frames: a video file, or the frames of one sequence in a folder."""

    name: str
    source: str
    fps: float
    size: tuple[int, int]  # (width, height) of every frame
    count: int  # frames (a video header's count can be off by a few)
    frames: Callable[[], Iterator[tuple[str, np.ndarray]]]  # (frame stem, HxWx3 RGB)


def open_video(path: str) -> Clip:
    """A video file as a Clip; an unreadable file is a DataError naming it and the fix."""
    cap = cv2.VideoCapture(path)
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise DataError(
            f"{path}: not a readable video (OpenCV could not decode a frame); convert it, "
            f"e.g. ffmpeg -i {path} -c:v mpeg4 clip.mp4"
        )
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    h, w = first.shape[:2]

    def frames() -> Iterator[tuple[str, np.ndarray]]:
        cap = cv2.VideoCapture(path)
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                i += 1
                yield f"frame_{i:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    return Clip(
        os.path.splitext(os.path.basename(path))[0],
        path,
        fps if fps and fps > 0 else DEFAULT_FPS,
        (w, h),
        count,
        frames,
    )


def frame_clips(folder: str, fps: float = DEFAULT_FPS) -> list[Clip]:
    """The images of a folder as clips in frame-number order. Names that differ only in their
    trailing number are one sequence ('davis_blackswan_00005'); a folder holding several
    (DAVIS test sets do) gives one clip per sequence, so no video or smoothing crosses a cut."""
    names = sorted((f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS)), key=natural_key)
    if not names:
        raise DataError(f"{folder}: no frames (images) in this folder; pass a folder of .jpg/.png frames")
    groups: dict[str, list[str]] = {}
    for f in names:
        groups.setdefault(sequence_name(os.path.splitext(f)[0]), []).append(f)
    base = os.path.basename(os.path.normpath(folder))
    clips = []
    for prefix, files in groups.items():
        paths = [os.path.join(folder, f) for f in files]
        h, w = read_image(paths[0]).shape[:2]

        def frames(paths=paths, size=(w, h)) -> Iterator[tuple[str, np.ndarray]]:
            for p in paths:
                rgb = read_image(p)
                if (rgb.shape[1], rgb.shape[0]) != size:
                    raise DataError(
                        f"{p}: frame is {rgb.shape[1]}x{rgb.shape[0]}, the sequence's first is "
                        f"{size[0]}x{size[1]}; frames of one clip must share a size"
                    )
                yield os.path.splitext(os.path.basename(p))[0], rgb

        name = base if len(groups) == 1 or not prefix else prefix
        clips.append(Clip(name, folder, fps, (w, h), len(paths), frames))
    return clips


class Smoother:
    """Centred moving average of probability maps over k frames (k - 1 frames of delay at
    most; the window is cut short at the clip's ends). k = 1 passes maps through."""

    def __init__(self, k: int):
        self.back, self.fwd = (k - 1) // 2, k // 2
        self.items: deque = deque()
        self.probs: deque = deque()
        self.first = 0  # frame index of items[0]
        self.seen = 0
        self.next = 0  # next frame to emit

    def push(self, item, prob: np.ndarray) -> list:
        """Add a frame; returns the (item, smoothed prob) pairs that are now complete."""
        self.items.append(item)
        self.probs.append(prob)
        self.seen += 1
        out = []
        while self.next + self.fwd < self.seen:
            out.append(self._emit())
        return out

    def flush(self) -> list:
        """The remaining frames at the end of the clip."""
        out = []
        while self.next < self.seen:
            out.append(self._emit())
        return out

    def _emit(self):
        t = self.next
        lo, hi = max(0, t - self.back), min(self.seen - 1, t + self.fwd)
        window = [self.probs[i - self.first] for i in range(lo, hi + 1)]
        result = (self.items[t - self.first], window[0] if len(window) == 1 else np.mean(window, axis=0))
        self.next += 1
        while self.first < self.next - self.back:  # no later frame's window reaches these
            self.items.popleft()
            self.probs.popleft()
            self.first += 1
        return result


def _writer(path: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*FOURCC), fps, size)
    if not w.isOpened():
        raise DataError(
            f"{path}: OpenCV cannot write {FOURCC} video here; check the folder is writable "
            f"and opencv-python-headless is installed"
        )
    return w


def clip_videos(out_dir: str, name: str) -> list[str]:
    """OUT/<clip>/mask.mp4 and overlay.mp4."""
    return [os.path.join(out_dir, name, "mask.mp4"), os.path.join(out_dir, name, "overlay.mp4")]


def predict_clip(
    predictor,
    clip: Clip,
    out_dir: str,
    threshold: float = 0.5,
    batch_size: int = 4,
    smooth: int = 1,
    save_frames: bool = False,
) -> dict:
    """Write OUT/<clip>/mask.mp4 and overlay.mp4 (and masks/, probs/ PNGs per frame with
    save_frames); returns frames written, rate, size, files and frames/s."""
    folder = os.path.join(out_dir, clip.name)
    os.makedirs(folder, exist_ok=True)
    if save_frames:
        for sub in ("masks", "probs"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
    files = clip_videos(out_dir, clip.name)
    # the videos are written under temporary names and renamed when complete: a process killed
    # mid-clip leaves no playable-looking half video (and --skip-existing redoes the clip)
    partial = [os.path.join(folder, f".partial-{os.getpid()}-{os.path.basename(f)}") for f in files]
    # MPEG-4 video holds even sizes only: OpenCV's writer would crop an odd row or column
    # silently; a copy of the last one is added instead, so every pixel of the input is kept.
    w, h = clip.size
    video_size = (w + w % 2, h + h % 2)

    def even(frame: np.ndarray) -> np.ndarray:
        if video_size == clip.size:
            return frame
        return cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)

    mask_video, overlay_video = (_writer(f, clip.fps, video_size) for f in partial)
    smoother, written, start = Smoother(smooth), 0, time.time()

    def write(pairs) -> None:
        nonlocal written
        for (stem, rgb), prob in pairs:
            mask = prob >= threshold
            grey = (mask * 255).astype(np.uint8)
            mask_video.write(even(cv2.merge([grey, grey, grey])))
            overlay_video.write(even(cv2.cvtColor(overlay_image(rgb, mask), cv2.COLOR_RGB2BGR)))
            if save_frames:
                save_atomically(Image.fromarray(grey), os.path.join(folder, "masks", stem + ".png"))
                save_atomically(Image.fromarray(to_uint8(prob)), os.path.join(folder, "probs", stem + ".png"))
            written += 1

    bar = tqdm(total=clip.count or None, desc=clip.name, unit="frame", disable=None)
    complete = False
    try:
        batch: list[tuple[str, np.ndarray]] = []
        for item in _then_none(clip.frames()):
            if item is not None:
                batch.append(item)
            if batch and (item is None or len(batch) == batch_size):
                inputs = torch.stack([predictor.prepare(rgb) for _, rgb in batch])
                probs = predictor.probabilities(inputs, [rgb.shape[:2] for _, rgb in batch])
                for pair, prob in zip(batch, probs):
                    write(smoother.push(pair, prob.cpu().numpy()))
                bar.update(len(batch))
                bar.set_postfix_str(f"{bar.n / max(time.time() - start, 1e-9):.1f} frames/s")
                batch = []
        write(smoother.flush())
        complete = True
    finally:
        bar.close()
        mask_video.release()
        overlay_video.release()
        for temporary, final in zip(partial, files):
            os.replace(temporary, final) if complete else os.remove(temporary)
    seconds = time.time() - start
    return {
        "clip": clip.name,
        "source": clip.source,
        "frames": written,
        "fps": clip.fps,
        "size": clip.size,
        "video_size": video_size,
        "files": files,
        "seconds": seconds,
        "frames_per_s": written / max(seconds, 1e-9),
    }


def _then_none(it: Iterator) -> Iterator:
    """The items, then one None: the signal to run the last, short batch."""
    yield from it
    yield None


def predict_clips(
    predictor, videos: list[str], frame_folders: list[str], opts: PredictOptions, shard: Shard = Shard()
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every video file and frame folder (one clip per sequence), each clip into its own folder of
    opts.out (a numeric suffix where two share a name: day1/GOPR0001.MP4, day2/GOPR0001.MP4 ->
    GOPR0001, GOPR0001_2); returns the clips' summaries and the inputs that could not be read, as
    [(input, why)], without stopping the others. shard: this process's clips, each whole;
    opts.skip_existing: clips whose two videos are there are not predicted again; opts.fps: the
    frame rate of frame folders; threshold, smoothing, batch and saved frames as opts says."""
    out_dir, fps, skip_existing = opts.out, opts.fps, opts.skip_existing
    options = dict(
        threshold=opts.threshold,
        batch_size=opts.inference.batch_size,
        smooth=opts.smooth,
        save_frames=opts.save_frames,
    )
    problems, opened = [], []
    for source in [*videos, *frame_folders]:
        try:
            clips = [open_video(source)] if source in videos else frame_clips(source, fps)
        except DataError as e:
            if shard.rank == 0:  # every process opens every input, to name the clips alike; one reports
                problems.append((source, e.reason.removeprefix(f"{source}: ")))
            continue
        opened += [(source, clip) for clip in clips]
    # every name is known before the first folder is written, so a suffix never lands on a clip's own name
    names = unique_names([clip.name for _, clip in opened])
    done, failed = [], set()
    for i in shard.indices(len(opened)):
        (source, clip), name = opened[i], names[i]
        if source in failed:  # one line per input: its later sequences are not tried
            continue
        if skip_existing and all(map(os.path.exists, clip_videos(out_dir, name))):
            continue
        try:
            done.append(predict_clip(predictor, replace(clip, name=name), out_dir, **options))
        except DataError as e:
            failed.add(source)
            problems.append((source, e.reason.removeprefix(f"{source}: ")))
    return done, problems


def describe_clip(c: dict, save_frames: bool) -> str:
    """One predicted clip, in one line: its frames, size and rate, and the files written."""
    w, h = c["size"]
    return (
        f"{c['source']}: {c['frames']} frames, {w}x{h} at {c['fps']:g} fps -> "
        f"{os.path.dirname(c['files'][0])}/mask.mp4, overlay.mp4"
        + (", masks/, probs/" if save_frames else "")
        + f" ({c['frames_per_s']:.1f} frames/s)"
        + (
            f"; the videos are {c['video_size'][0]}x{c['video_size'][1]} (MPEG-4 needs even sizes: "
            f"the last row or column repeated)"
            if c["video_size"] != c["size"]
            else ""
        )
    )
