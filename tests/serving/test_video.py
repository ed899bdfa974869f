import os

import cv2
import numpy as np
import pytest
from PIL import Image

from camodet.cli import main
from camodet.serving.video import Smoother, frame_clips, natural_key, sequence_name

from ..conftest import REAL_SAMPLES

DAVIS = os.path.join(os.path.dirname(REAL_SAMPLES), "real_dev", "TestDataset", "DAVIS", "Imgs")


def write_clip(path, frames: int = 11, fps: float = 12.0, size=(96, 72)) -> None:
    """A textured background with a blob moving across it, written as OpenCV writes videos."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    background = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        cv2.circle(frame, (10 + 7 * i, h // 2), 12, (30, 160, 60), -1)
        writer.write(frame)
    writer.release()


def video_facts(path) -> tuple[int, float, tuple[int, int]]:
    """(frames decoded, header fps, (width, height))."""
    cap = cv2.VideoCapture(str(path))
    fps, size = cap.get(cv2.CAP_PROP_FPS), (int(cap.get(3)), int(cap.get(4)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps, size


def test_video_gives_mask_and_overlay_videos_at_input_size_and_rate(tiny_checkpoint, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    assert video_facts(clip) == (11, 12.0, (96, 72))
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(tiny_checkpoint),
                str(clip),
                "--out",
                str(out),
                "--save-frames",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    for name in ("mask.mp4", "overlay.mp4"):
        assert video_facts(out / "clip" / name) == (11, 12.0, (96, 72))
    masks = sorted(os.listdir(out / "clip" / "masks"))
    assert masks == [f"frame_{i:06d}.png" for i in range(1, 12)]
    assert np.asarray(Image.open(out / "clip" / "masks" / masks[0])).shape == (72, 96)
    assert sorted(os.listdir(out / "clip" / "probs")) == masks
    text = capsys.readouterr().out
    assert "11 frames, 96x72 at 12 fps" in text and "frames/s)" in text


def test_smoothing_averages_neighbouring_frames(tiny_checkpoint, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=6)
    for k in ("1", "3"):
        assert (
            main(
                [
                    "predict",
                    str(tiny_checkpoint),
                    str(clip),
                    "--out",
                    str(tmp_path / k),
                    "--save-frames",
                    "--smooth",
                    k,
                ]
            )
            == 0
        )

    def probs(k):
        folder = tmp_path / k / "clip" / "probs"
        return [np.asarray(Image.open(folder / f), np.float32) for f in sorted(os.listdir(folder))]

    raw, smooth = probs("1"), probs("3")
    assert len(smooth) == 6
    assert np.abs(smooth[2] - (raw[1] + raw[2] + raw[3]) / 3).max() <= 1.0  # 8-bit rounding
    assert np.abs(smooth[0] - (raw[0] + raw[1]) / 2).max() <= 1.0  # window cut at the start
    assert np.abs(smooth[2] - raw[2]).max() > 1.0


def test_smoother_windows():
    maps = [np.full((2, 2), float(v)) for v in (0, 3, 6, 9)]

    def run(k):
        s, out = Smoother(k), []
        for i, m in enumerate(maps):
            out += s.push(i, m)
        out += s.flush()
        assert [i for i, _ in out] == [0, 1, 2, 3]
        return [float(p[0, 0]) for _, p in out]

    assert run(1) == [0, 3, 6, 9]
    assert run(3) == [1.5, 3, 6, 7.5]
    assert run(2) == [1.5, 4.5, 7.5, 9]
    assert run(9) == [4.5] * 4


def test_frame_folder_in_frame_number_order_one_clip_per_sequence(tiny_checkpoint, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in (1, 2, 10, 11, 3):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(frames / f"bear_{i}.jpg")
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(frames / f"cat-{i:03d}.png")
    clips = frame_clips(str(frames), fps=10)
    assert [c.name for c in clips] == ["bear", "cat"]
    assert [s for s, _ in clips[0].frames()] == ["bear_1", "bear_2", "bear_3", "bear_10", "bear_11"]
    assert sorted(["f10", "f9", "f100"], key=natural_key) == ["f9", "f10", "f100"]
    out = tmp_path / "out"
    assert (
        main(["predict", str(tiny_checkpoint), str(frames), "--frames", "--fps", "10", "--out", str(out)])
        == 0
    )
    assert video_facts(out / "bear" / "mask.mp4") == (5, 10.0, (56, 40))
    assert video_facts(out / "cat" / "overlay.mp4") == (4, 10.0, (56, 40))
    # without --frames the same folder is a folder of photos, as before
    assert (
        main(
            [
                "predict",
                str(tiny_checkpoint),
                str(frames),
                "--out",
                str(tmp_path / "photos"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert len(os.listdir(tmp_path / "photos" / "masks")) == 9


def test_timestamped_frames_are_one_clip(tmp_path):
    """A camera's frames named by date and time change minute and hour mid-recording: one clip,
    in time order, not one per minute."""
    frames = tmp_path / "trap_cam"
    frames.mkdir()
    stamps = ["2023-05-01_12-00-58", "2023-05-01_12-00-59", "2023-05-01_12-01-00", "2023-05-01_13-00-00"]
    for stamp in reversed(stamps):
        Image.new("RGB", (16, 12)).save(frames / f"{stamp}.jpg")
    clips = frame_clips(str(frames))
    assert [c.name for c in clips] == ["trap_cam"] and clips[0].count == 4
    assert [s for s, _ in clips[0].frames()] == stamps


@pytest.mark.parametrize(
    "stem, sequence",
    [
        ("2023-05-01_12-00-59", ""),
        ("IMG_20230501_120059", "IMG"),
        ("cam1_20230501T120059.250", "cam1"),
        ("cam_12:00:59", "cam"),
        ("davis_blackswan_00005", "davis_blackswan"),
        ("clip_12_0001", "clip_12"),  # clip 12, frame 1: not a time of day
        ("video10_0001", "video10"),
        ("seq_2023_0001", "seq_2023"),
        ("bear_11", "bear"),
    ],
)
def test_sequence_name_takes_a_timestamp_as_one_number(stem, sequence):
    assert sequence_name(stem) == sequence


def test_bad_videos_and_folders_are_named(tiny_checkpoint, tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    clip = tmp_path / "ok.mp4"
    write_clip(clip, frames=3)
    out = tmp_path / "out"
    rc = main(
        ["predict", str(tiny_checkpoint), str(fake), str(empty), str(clip), "--frames", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert f"skipped {fake}: not a readable video (OpenCV could not decode a frame); convert it" in err
    assert f"skipped {empty}: no frames (images) in this folder" in err
    assert video_facts(out / "ok" / "mask.mp4")[0] == 3  # the good clip still ran
    assert main(["predict", str(tiny_checkpoint), str(clip), "--out", str(out), "--smooth", "0"]) == 2


@pytest.mark.skipif(not os.path.isdir(DAVIS), reason="needs ../shared/data/real_dev/TestDataset/DAVIS")
def test_davis_frames(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "davis"
    assert (
        main(
            [
                "predict",
                str(tiny_checkpoint),
                DAVIS,
                "--frames",
                "--out",
                str(out),
                "--save-frames",
                "--smooth",
                "3",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    names = sorted(os.listdir(DAVIS))
    sequences: dict[str, list[str]] = {}
    for f in names:
        sequences.setdefault(f.rsplit("_", 1)[0], []).append(os.path.splitext(f)[0])
    assert sorted(os.listdir(out)) == sorted(sequences)
    for seq, stems in sequences.items():
        w, h = Image.open(os.path.join(DAVIS, stems[0] + ".jpg")).size
        assert video_facts(out / seq / "mask.mp4") == (len(stems), 25.0, (w, h))
        assert sorted(os.path.splitext(f)[0] for f in os.listdir(out / seq / "masks")) == sorted(stems)
    assert capsys.readouterr().out.count("frames/s)") == len(sequences)


def test_clips_of_the_same_name_get_their_own_folders(tiny_checkpoint, tmp_path, capsys):
    for day, frames in (("day1", 3), ("day2", 5)):
        (tmp_path / day).mkdir()
        write_clip(tmp_path / day / "GOPR0001.MP4", frames=frames)
    rng = np.random.default_rng(2)
    for cam, n in (("cam1", 2), ("cam2", 4)):
        seq = tmp_path / cam / "frames"
        seq.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(seq / f"f_{i:03d}.jpg")
    out = tmp_path / "out"
    inputs = [str(tmp_path / d / "GOPR0001.MP4") for d in ("day1", "day2")]
    inputs += [str(tmp_path / c / "frames") for c in ("cam1", "cam2")]
    assert main(["predict", str(tiny_checkpoint), *inputs, "--frames", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["GOPR0001", "GOPR0001_2", "frames", "frames_2"]
    assert [video_facts(out / d / "mask.mp4")[0] for d in sorted(os.listdir(out))] == [3, 5, 2, 4]
    text = capsys.readouterr().out
    assert f"{inputs[1]}: 5 frames, 96x72 at 12 fps -> {out / 'GOPR0001_2'}/mask.mp4" in text
    assert f"{inputs[3]}: 4 frames, 56x40 at 25 fps -> {out / 'frames_2'}/mask.mp4" in text


def test_video_patterns_are_videos(tiny_checkpoint, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "b.mp4", frames=3)
    write_clip(clips / "a.mp4", frames=4)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(clips / "*.mp4"), "--out", str(out)]) == 0
    assert video_facts(out / "a" / "mask.mp4")[0] == 4 and video_facts(out / "b" / "overlay.mp4")[0] == 3
    captured = capsys.readouterr()
    assert "wrote masks, probs" not in captured.out and captured.err == ""
    assert captured.out.index(str(clips / "a.mp4")) < captured.out.index(str(clips / "b.mp4"))
    missing = str(tmp_path / "nothing" / "*.mp4")
    assert main(["predict", str(tiny_checkpoint), missing, "--out", str(out)]) == 1
    assert f"skipped {missing}: no such file, folder or matching pattern" in capsys.readouterr().err


def test_odd_sized_frames_keep_every_pixel(tiny_checkpoint, tmp_path, capsys):
    """MPEG-4 holds even sizes: OpenCV's writer cropped a 97x71 clip to 96x70 without a word."""
    frames = tmp_path / "odd"
    frames.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (71, 97, 3), dtype=np.uint8)).save(frames / f"f_{i}.png")
    out = tmp_path / "out"
    assert (
        main(["predict", str(tiny_checkpoint), str(frames), "--frames", "--out", str(out), "--save-frames"])
        == 0
    )
    assert video_facts(out / "odd" / "mask.mp4") == (3, 25.0, (98, 72))
    mask_png = np.asarray(Image.open(out / "odd" / "masks" / "f_0.png"))
    assert mask_png.shape == (71, 97)  # the PNGs keep the input's size
    text = capsys.readouterr().out
    assert "3 frames, 97x71 at 25 fps" in text and "the videos are 98x72 (MPEG-4 needs even sizes" in text
