import os
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from camodet.data.check import check_dataset
from camodet.data.dataset import CODDataset
from camodet.data.io import DataError, read_image, read_mask
from camodet.data.layouts import detect_layout, gather, list_samples
from camodet.data.synth import make_sample, write_dataset

from ..conftest import real_samples_dir


def _pair(img_dir, gt_dir, stem, size=(40, 30)):
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(os.path.join(img_dir, stem + ".jpg"))
    Image.new("L", size, 255).save(os.path.join(gt_dir, stem + ".png"))


@pytest.mark.parametrize(
    "layout, dirs, splits",
    [
        (
            "COD10K-v3",
            [("Train/Image", "Train/GT_Object"), ("Test/Image", "Test/GT_Object")],
            {"train", "test"},
        ),
        ("CAMO", [("Images/Train", "GT"), ("Images/Test", "GT")], {"train", "test"}),
        ("Imgs/GT", [("Imgs", "GT")], {"all"}),
        (
            "SINet",
            [
                ("TrainDataset/Imgs", "TrainDataset/GT"),
                ("TestDataset/CHAMELEON/Imgs", "TestDataset/CHAMELEON/GT"),
            ],
            {"train", "test"},
        ),
    ],
)
def test_layouts_detected(tmp_path, layout, dirs, splits):
    root = tmp_path / "NC4K"
    for k, (img, gt) in enumerate(dirs):
        _pair(root / img, root / gt, f"img{k}")
    found = detect_layout(str(root))
    assert {s.split for s in found} == splits and {s.layout for s in found} == {layout}
    if layout == "SINet":
        assert {s.dataset for s in found if s.split == "test"} == {"CHAMELEON"}
    assert sum(len(list_samples(s).samples) for s in found) >= len(dirs)


def test_unknown_layout_message(tmp_path):
    with pytest.raises(DataError, match="no known dataset layout.*--images DIR --masks DIR"):
        detect_layout(str(tmp_path))


def test_cod10k_cam_only_by_default(synth_root):
    train = gather([synth_root], "train")
    assert train and not any(s.is_noncam for s in train)
    everything = gather([synth_root], "train", include_noncam=True)
    assert len(everything) == 24 and sum(s.is_noncam for s in everything) == 3


def test_several_roots_combine(synth_root, tmp_path):
    other = tmp_path / "CAMO"
    _pair(other / "Images/Train", other / "GT", "camo_1")
    both = gather([synth_root, str(other)], "train")
    assert len(both) == len(gather([synth_root], "train")) + 1
    assert {s.dataset for s in both} == {"COD10K", "CAMO"}


def test_unmatched_and_mismatched_files(tmp_path):
    root = tmp_path / "ds"
    _pair(root / "Imgs", root / "GT", "good")
    _pair(root / "Imgs", root / "GT", "wrong_size")
    Image.new("L", (10, 10)).save(root / "GT" / "wrong_size.png")
    Image.new("RGB", (8, 8)).save(root / "Imgs" / "lonely.jpg")
    Image.new("L", (8, 8)).save(root / "GT" / "orphan.png")
    with pytest.raises(DataError) as e:
        gather([str(root)], "train")
    assert "--skip-bad-files" in str(e.value) and "2 more" in str(e.value)
    assert [s.name for s in gather([str(root)], "train", skip_bad_files=True)] == ["good"]
    report = check_dataset(str(root))
    text = " ".join(report["problems"])
    assert "orphan.png: mask without an image" in text and "lonely.jpg: image without a mask" in text
    assert "wrong_size.png: mask is 10x10 but its image is 40x30" in text


def test_unreadable_file_named_and_skippable(tmp_path):
    root = tmp_path / "ds"
    _pair(root / "Imgs", root / "GT", "a")
    _pair(root / "Imgs", root / "GT", "b")
    (root / "Imgs" / "b.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match="b.jpg: unreadable image") as e:
        gather([str(root)], "train")
    assert str(e.value).count("--skip-bad-files") == 1
    samples = gather([str(root)], "train", skip_bad_files=True)
    assert [s.name for s in samples] == ["a"]


def test_corrupt_file_in_dataset_names_file(tmp_path):
    root = tmp_path / "ds"
    _pair(root / "Imgs", root / "GT", "a")
    samples = gather([str(root)], "train")
    data = (root / "Imgs" / "a.jpg").read_bytes()
    (root / "Imgs" / "a.jpg").write_bytes(data[:60])  # header survives, pixels do not
    with pytest.raises(DataError, match="a.jpg"):
        CODDataset(samples, 32, train=True)[0]


def test_image_modes(tmp_path):
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    for name in ("grey.png", "rgba.png", "cmyk.jpg", "deep.png"):
        arr = read_image(str(tmp_path / name))
        assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8, name
    assert abs(int(read_image(str(tmp_path / "deep.png"))[0, 0, 0]) - int(rgb[0, 0, 0])) <= 1
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(tmp_path / "mask16.png")
    assert read_mask(str(tmp_path / "mask16.png")).min() == 255


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (30, 20), (200, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 when displayed
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(str(tmp_path / "rot.jpg")).shape == (30, 20, 3)


@pytest.mark.skipif(real_samples_dir() is None, reason="../shared/data/real_camo_samples not present")
def test_real_camo_samples_load_with_original_sizes(tmp_path):
    samples = gather([real_samples_dir()], "test")
    sizes = {s.name: s.size for s in samples}
    assert sizes == {
        "camourflage_00012": (632, 420),
        "camourflage_00018": (940, 628),
        "camourflage_00061": (960, 640),
        "camourflage_00064": (589, 617),
    }
    ds = CODDataset(samples, 96, train=False)
    for i, s in enumerate(samples):
        item = ds[i]
        assert item["gt"].shape == (s.size[1], s.size[0]) and item["image"].shape == (3, 96, 96)
        assert 0 < (item["gt"] > 127).mean() < 1


def test_synth_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(str(a), 3, 1, seed=5)
    write_dataset(str(b), 3, 1, seed=5, workers=2)  # in other processes: the same files
    written = sorted(p.relative_to(a) for p in a.rglob("*.*"))
    assert len(written) == 8 and written == sorted(p.relative_to(b) for p in b.rglob("*.*"))
    for f in written:
        assert (a / f).read_bytes() == (b / f).read_bytes()
    write_dataset(str(tmp_path / "c"), 3, 1, seed=6)
    first = sorted((a / "Train" / "Image").iterdir())[0].name
    assert (a / "Train/Image" / first).read_bytes() != (tmp_path / "c/Train/Image" / first).read_bytes()
    assert len(detect_layout(str(a))) == 2


def test_synth_object_has_background_colours():
    """The object is drawn from the background's palette: mean colours nearly agree."""
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(10):
        image, mask = make_sample(rng, 128, 128)
        inside, outside = image[mask > 0].mean(0), image[mask == 0].mean(0)
        gaps.append(np.abs(inside - outside).max() / image.std())
    assert np.median(gaps) < 0.5


def test_train_augmentation_reproducible(synth_root):
    ds = CODDataset(gather([synth_root], "train"), 48, train=True)
    a, b, c = ds[(2, [1, 1, 2])], ds[(2, [1, 1, 2])], ds[(2, [1, 2, 2])]
    assert (a["image"] == b["image"]).all() and not (a["image"] == c["image"]).all()
    assert a["mask"].shape == (1, 48, 48) and set(a["mask"].unique().tolist()) <= {0.0, 1.0}


def test_flip_augmentation_is_the_plain_view_or_its_mirror(synth_root):
    samples = gather([synth_root], "train")
    plain = CODDataset(samples, 48, train=False)[3]
    flip = CODDataset(samples, 48, train=True, augment="flip")
    seen = set()
    for seed in range(8):
        got = flip[(3, [seed])]
        mirrored = bool((got["image"] == plain["image"].flip(-1)).all())
        assert mirrored or (got["image"] == plain["image"]).all()  # no crop, rotation or colour
        assert (got["mask"] == (plain["mask"].flip(-1) if mirrored else plain["mask"])).all()
        seen.add(mirrored)
    assert seen == {True, False}
    full = CODDataset(samples, 48, train=True)[(3, [0])]["image"]
    assert not (full == plain["image"]).all() and not (full == plain["image"].flip(-1)).all()


_KILL = {}  # what the writer processes of the next test inherit (they are forked)


def _cache_writer_dying_on_the_third(job):
    if os.getpid() != _KILL["parent"] and job[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _KILL["real"](job)


def _synth_writer_dying_on_the_third(*job):
    if os.getpid() != _KILL["parent"] and job[2] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _KILL["real"](*job)


@pytest.mark.parametrize("kind", ["cache", "synth"])
def test_a_killed_writer_process_is_one_line_and_leaves_no_half_cache(
    kind, synth_root, tmp_path, monkeypatch
):
    """The processes that write a cache (--cache with workers) or a synthetic set (synth --workers):
    one killed mid-way (the out-of-memory killer) ends the command in one line, within seconds,
    and no half-written cache is left for the next run to read."""
    import time

    import camodet.data.cache as cache
    import camodet.data.synth as synth
    from camodet.data.io import DataError
    from camodet.data.layouts import gather

    module, name, dying = (
        (cache, "_write_one", _cache_writer_dying_on_the_third)
        if kind == "cache"
        else (synth, "_write_sample", _synth_writer_dying_on_the_third)
    )
    _KILL.update(parent=os.getpid(), real=getattr(module, name))
    monkeypatch.setattr(module, name, dying)
    t = time.monotonic()
    with pytest.raises(DataError, match="died .*out-of-memory killer"):
        if kind == "cache":
            cache.cached_samples(gather([synth_root], "train")[:12], 32, str(tmp_path / "c"), workers=2)
        else:
            synth.write_dataset(str(tmp_path / "s"), 12, 0, seed=0, size_range=(32, 48), workers=2)
    assert time.monotonic() - t < 60
    if kind == "cache":
        assert os.listdir(tmp_path / "c") == []  # the temp folder is gone, no index to read


def test_cache_written_once_and_read_back(synth_root, tmp_path):
    from camodet.data.cache import cached_samples
    from camodet.data.dataset import CODDataset
    from camodet.data.layouts import gather

    samples = gather([synth_root], "train")[:6]
    first = cached_samples(samples, 32, str(tmp_path / "cache"), workers=2)
    (folder,) = os.listdir(tmp_path / "cache")
    stamp = os.path.getmtime(tmp_path / "cache" / folder / "0.image.npy")
    again = cached_samples(samples, 32, str(tmp_path / "cache"), workers=2)
    assert again == first and os.path.getmtime(tmp_path / "cache" / folder / "0.image.npy") == stamp
    assert all(s.image.endswith(".npy") and s.gt == o.mask for s, o in zip(first, samples))
    # pre-resized for training (longer side <= 1.5 x 32), original GT for evaluation
    plain, cached = CODDataset(samples, 32, train=False), CODDataset(first, 32, train=False)
    for i in range(len(samples)):
        assert max(np.load(first[i].image).shape[:2]) <= 48
        assert np.array_equal(cached[i]["gt"], plain[i]["gt"])
        # the same picture, resampled twice (fine stripes at 32 px differ by a few grey levels)
        assert np.corrcoef(cached[i]["image"].ravel(), plain[i]["image"].ravel())[0, 1] > 0.9
    assert CODDataset(first, 32, train=True)[(0, [1, 2])]["image"].shape == (3, 32, 32)
    # another image size is another cache
    cached_samples(samples, 64, str(tmp_path / "cache"), workers=0)
    assert len(os.listdir(tmp_path / "cache")) == 2


# --- trees shaped like the real downloads --------------------------------------------------


def test_benchmark_trees_read_with_the_right_counts(benchmarks):
    """Each download's own shape: CAMO's masks of both splits in one GT/ folder, COD10K's
    NonCAM images left out, NC4K and CHAMELEON as test sets; no problem reported anywhere."""
    from ..conftest import BENCHMARK_COUNTS

    for name, root in benchmarks.items():
        train_cam, _, test_cam, _ = BENCHMARK_COUNTS[name]
        test = gather([root], "test")
        assert len(test) == test_cam and {s.dataset for s in test} == {name}, name
        if train_cam:
            assert len(gather([root], "train")) == train_cam, name
        report = check_dataset(root)
        assert report["problems"] == [], name
        assert sum(s["used_by_default"] for s in report["splits"]) == train_cam + test_cam, name
    camo = {s.split: s for s in detect_layout(benchmarks["CAMO"])}
    assert camo["train"].masks == camo["test"].masks  # one GT/ folder for both splits


def test_all_four_roots_combined(benchmarks):
    from ..conftest import BENCHMARK_COUNTS

    roots = list(benchmarks.values())
    train = gather(roots, "train")  # COD10K + CAMO: the field's standard training set, in miniature
    assert len(train) == BENCHMARK_COUNTS["COD10K"][0] + BENCHMARK_COUNTS["CAMO"][0]
    assert {s.dataset for s in train} == {"COD10K", "CAMO"}
    test = gather(roots, "test")
    assert {n: sum(s.dataset == n for s in test) for n in benchmarks} == {
        n: c[2] for n, c in BENCHMARK_COUNTS.items()
    }


def test_camo_mask_orphaned_in_both_splits_reported_once(tmp_path, benchmarks):
    root = tmp_path / "CAMO"
    shutil.copytree(benchmarks["CAMO"], root)
    Image.new("L", (8, 8)).save(root / "GT" / "camourflage_09999.png")
    with pytest.raises(DataError, match="camourflage_09999.png: mask without an image in .*Test or .*Train"):
        gather([str(root)], "test")
    assert len(gather([str(root)], "train", skip_bad_files=True)) == 4
    problems = check_dataset(str(root))["problems"]
    assert len(problems) == 1 and "camourflage_09999.png" in problems[0]


def test_test_only_benchmarks_are_not_trained_on(benchmarks, caplog):
    with pytest.raises(DataError, match="NC4K is a test-only benchmark.*--images .*Imgs --masks .*GT"):
        gather([benchmarks["NC4K"]], "train")
    with caplog.at_level("INFO", logger="camodet"):
        train = gather([benchmarks["COD10K"], benchmarks["CHAMELEON"]], "train")
    assert {s.dataset for s in train} == {"COD10K"}
    assert "CHAMELEON is a test-only benchmark; not used for training" in caplog.text
    # asked for explicitly, it trains
    nc4k = benchmarks["NC4K"]
    assert len(gather([], "train", images=os.path.join(nc4k, "Imgs"), masks=os.path.join(nc4k, "GT"))) == 3


def _sinet_tree(root, benchmarks):
    """SINet's TrainDataset (COD10K train + CAMO train, NonCAM included by some copies) and
    TestDataset/<NAME>, built from the other fixture trees."""
    for src_img, src_gt in (
        (f"{benchmarks['COD10K']}/Train/Image", f"{benchmarks['COD10K']}/Train/GT_Object"),
        (f"{benchmarks['CAMO']}/Images/Train", None),
    ):
        for f in os.listdir(src_img):
            stem = os.path.splitext(f)[0]
            shutil.copy(os.path.join(src_img, f), root / "TrainDataset" / "Imgs" / f)
            shutil.copy(
                os.path.join(src_gt or f"{benchmarks['CAMO']}/GT", stem + ".png"),
                root / "TrainDataset" / "GT",
            )
    for name, (img, gt) in {
        "COD10K": ("Test/Image", "Test/GT_Object"),
        "CAMO": ("Images/Test", "GT"),
        "NC4K": ("Imgs", "GT"),
        "CHAMELEON": ("Imgs", "GT"),
    }.items():
        shutil.copytree(os.path.join(benchmarks[name], img), root / "TestDataset" / name / "Imgs")
        os.makedirs(root / "TestDataset" / name / "GT")
        for f in os.listdir(root / "TestDataset" / name / "Imgs"):
            shutil.copy(
                os.path.join(benchmarks[name], gt, os.path.splitext(f)[0] + ".png"),
                root / "TestDataset" / name / "GT",
            )


def test_noncam_left_out_in_every_layout(tmp_path, benchmarks):
    """COD10K's NonCAM images (empty masks: empty/empty scores IoU 1) leak in through flat
    folders, SINet-style trees and --images/--masks unless filtered by name everywhere."""
    from ..conftest import BENCHMARK_COUNTS

    cam_train, noncam_train, cam_test, noncam_test = BENCHMARK_COUNTS["COD10K"]
    flat_test = os.path.join(benchmarks["COD10K"], "Test")  # --dataset-path COD10K-v3/Test
    test = gather([flat_test], "test")
    assert len(test) == cam_test and not any(s.is_noncam for s in test) and test[0].dataset == "COD10K"
    assert len(gather([flat_test], "test", include_noncam=True)) == cam_test + noncam_test
    pairs = gather(
        [], "train", images=os.path.join(flat_test, "Image"), masks=os.path.join(flat_test, "GT_Object")
    )
    assert len(pairs) == cam_test
    sinet = tmp_path / "SINet"
    (sinet / "TrainDataset" / "Imgs").mkdir(parents=True)
    (sinet / "TrainDataset" / "GT").mkdir()
    _sinet_tree(sinet, benchmarks)
    assert len(gather([str(sinet)], "train")) == cam_train + BENCHMARK_COUNTS["CAMO"][0]
    assert len(gather([str(sinet)], "train", include_noncam=True)) == cam_train + noncam_train + 4
    test = gather([str(sinet)], "test")
    assert {n: sum(s.dataset == n for s in test) for n in benchmarks} == {
        n: c[2] for n, c in BENCHMARK_COUNTS.items()
    }
    check = check_dataset(str(sinet))
    train_split = next(s for s in check["splits"] if s["split"] == "train")
    assert (train_split["noncam"], train_split["used_by_default"]) == (noncam_train, cam_train + 4)


# --- masks that are not 0/255 grey ---------------------------------------------------------


def _mask_files(folder):
    """The same 20x30 object stored the ways real label files store it."""
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 10:22] = 1
    Image.fromarray(m).save(folder / "labels01.png")
    Image.fromarray(m.astype(np.uint16)).save(folder / "labels01_16bit.png")
    pal = Image.fromarray(m, "P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC-style: index 1 is dark red
    pal.save(folder / "palette.png")
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[m > 0] = (0, 200, 0)
    Image.fromarray(rgb).save(folder / "rgb_labels.png")
    Image.fromarray(np.dstack([np.zeros((20, 30, 3), np.uint8), m * 255]), "RGBA").save(
        folder / "alpha_only.png"
    )
    Image.fromarray(m * 255).save(folder / "plain.png")
    return m > 0


def test_label_masks_read_as_their_object(tmp_path):
    from camodet.data.io import decode_mask

    want = _mask_files(tmp_path)
    kinds = {}
    for f in (
        "labels01.png",
        "labels01_16bit.png",
        "palette.png",
        "rgb_labels.png",
        "alpha_only.png",
        "plain.png",
    ):
        mask, kinds[f] = decode_mask(str(tmp_path / f))
        assert np.array_equal(mask > 127, want), f
        assert np.array_equal(read_mask(str(tmp_path / f)), mask), f
    assert kinds["plain.png"] is None and kinds["labels01.png"] == "0/1 labels (object = 1)"
    assert kinds["palette.png"] == "palette labels" and kinds["rgb_labels.png"] == "RGB labels"
    assert kinds["alpha_only.png"].startswith("alpha channel")


def test_masks_without_one_meaning_are_refused_naming_the_file(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[2:8, 2:8], rgb[10:15, 10:15] = (255, 0, 0), (0, 0, 255)  # two classes
    Image.fromarray(rgb).save(tmp_path / "classes.png")
    with pytest.raises(DataError, match=r"classes.png: mask has 3 colours .*save it as 8-bit grey") as e:
        read_mask(str(tmp_path / "classes.png"))
    assert "\n" not in str(e.value) and e.value.skippable
    grey = np.zeros((20, 30), np.uint8)
    grey[:, :10] = 255
    alpha = np.zeros((20, 30), np.uint8)
    alpha[:, 20:] = 255
    Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA").save(tmp_path / "disagree.png")
    with pytest.raises(DataError, match="disagree.png: mask has an alpha channel and colours that disagree"):
        read_mask(str(tmp_path / "disagree.png"))


def test_data_check_names_label_masks(tmp_path):
    root = tmp_path / "ds"
    _pair(root / "Imgs", root / "GT", "a", size=(30, 20))
    _pair(root / "Imgs", root / "GT", "b", size=(30, 20))
    _mask_files(tmp_path)
    for stem in ("a", "b"):
        shutil.copy(tmp_path / "labels01.png", root / "GT" / f"{stem}.png")
    from camodet.data.check import format_report

    report = check_dataset(str(root))
    assert report["problems"] == []
    assert report["splits"][0]["mask_formats"]["0/1 labels (object = 1)"]["count"] == 2
    assert "note: 2 mask(s) in" in format_report(
        report
    ) and "stored as 0/1 labels (object = 1)" in format_report(report)


def _jitter_then_normalise_step_by_step(rng, image, norm, strength=0.2):
    """The training colour jitter as it was written before it was fused with the normalisation."""
    img = image.astype(np.float32)
    brightness, contrast, saturation = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * saturation
    img = (img - img.mean()) * contrast + img.mean()
    img = np.clip(img * brightness, 0, 255)
    mean, std = np.array(norm.mean, np.float32) * 255, np.array(norm.std, np.float32) * 255
    return ((img - mean) / std).transpose(2, 0, 1)


@pytest.mark.parametrize("norm", ["imagenet", "half"])
def test_jitter_applied_with_the_normalisation_equals_the_step_by_step_formula(norm):
    from camodet.data.normalization import IMAGENET, Normalization
    from camodet.data.transforms import colour_jitter

    norm = IMAGENET if norm == "imagenet" else Normalization((0.5,) * 3, (0.5,) * 3)
    gen = np.random.default_rng(0)
    images = [
        gen.integers(0, 256, (33, 47, 3), dtype=np.uint8),  # odd sizes
        np.full((16, 16, 3), 255, np.uint8),  # saturated: brightness > 1 must clip at 255
        np.zeros((16, 16, 3), np.uint8),
        np.dstack([np.full((8, 8), v, np.uint8) for v in (250, 5, 128)]),  # strong colour: clips per channel
    ]
    white = (255 - np.array(norm.mean) * 255) / (np.array(norm.std) * 255)  # 255 on the normalised scale
    clipped = 0
    for image in images:
        for seed in range(20):
            want = _jitter_then_normalise_step_by_step(np.random.default_rng(seed), image, norm)
            rng = np.random.default_rng(seed)
            got = norm.apply(image, colour_jitter(rng, image))
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
            # the same three draws: the samples after it see the same random stream
            assert rng.random() == np.random.default_rng(seed).uniform(size=4)[3]
            clipped += int(np.isclose(got, white[:, None, None]).any())
    assert clipped > 0  # the clip was exercised


# --- dataset names and rows -----------------------------------------------------------------


@pytest.mark.parametrize(
    "folder, name",
    [
        ("CAMO-V.1.0-CVIU2019", "CAMO"),
        ("COD10K-v3", "COD10K"),
        ("camo", "CAMO"),
        ("NC4K_2", "NC4K"),
        ("camouflage_hard", "camouflage_hard"),
        ("camo_easy", "camo_easy"),
        ("chameleon_extra", "chameleon_extra"),
        ("CAMO_COD_train", "CAMO_COD_train"),
    ],
)
def test_known_names_match_only_the_name_and_a_version(tmp_path, folder, name):
    _pair(tmp_path / folder / "Imgs", tmp_path / folder / "GT", "a")
    assert [s.dataset for s in detect_layout(str(tmp_path / folder))] == [name]


def test_data_check_counts_what_training_takes(tmp_path, benchmarks):
    """A user's folder named like a test-only benchmark is trained on, the benchmark itself is
    not, and `data check` says per split exactly what training takes."""
    extra = tmp_path / "chameleon_extra"
    for i in range(3):
        _pair(extra / "Imgs", extra / "GT", f"animal-{i + 1}")
    cod = benchmarks["COD10K"]

    def counted(root):
        return sum(s["used_for_training"] for s in check_dataset(root)["splits"])

    assert counted(cod) == len(gather([cod], "train")) == 6
    for root, trained in ((str(extra), 3), (benchmarks["CHAMELEON"], 0), (benchmarks["CAMO"], 4)):
        assert len(gather([cod, root], "train")) - 6 == counted(root) == trained, root


def test_files_of_one_name_in_a_folder_are_refused(tmp_path):
    """a.jpg and a.png pair with the one mask a.png and would save one prediction file: the
    second is named, not dropped unsaid."""
    root = tmp_path / "pairs"
    _pair(root / "Imgs", root / "GT", "a")
    _pair(root / "Imgs", root / "GT", "b")
    Image.new("RGB", (40, 30)).save(root / "Imgs" / "a.png")
    with pytest.raises(DataError, match=r"Imgs/a.png: same name as a.jpg .*; fix or replace it"):
        gather([str(root)], "test")
    assert [s.name for s in gather([str(root)], "train", skip_bad_files=True)] == ["a", "b"]
    assert any("a.png: same name as a.jpg" in p for p in check_dataset(str(root))["problems"])


def test_a_folder_given_twice_is_refused(synth_root):
    with pytest.raises(DataError, match="the same folder as .*, given twice; give it once"):
        gather([synth_root, synth_root + os.sep], "train")


def test_images_convert_alike_from_file_pil_and_array(tmp_path):
    """One conversion for every way a photo arrives: alpha on black, 16-bit grey scaled."""
    from camodet.data.io import read_image, rgb_of, rgb_of_array

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[0, :, 3], rgba[1, :, 3] = 200, 0, 255
    grey16 = np.array([[0, 65535], [32768, 1000]], np.uint16)
    for name, arr in (("rgba.png", rgba), ("grey16.png", grey16)):
        Image.fromarray(arr).save(tmp_path / name)
        want = read_image(str(tmp_path / name))
        np.testing.assert_array_equal(rgb_of(Image.open(tmp_path / name)), want)
        np.testing.assert_array_equal(rgb_of_array(np.asarray(Image.open(tmp_path / name))), want)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.png"))[:, 0], [[0, 0, 0], [200, 200, 200]])
    np.testing.assert_array_equal(read_image(str(tmp_path / "grey16.png"))[..., 0], [[0, 255], [128, 4]])
