import os

import pytest

from camodet.cli import main
from camodet.runs import history


@pytest.fixture(scope="module")
def watched_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("watched") / "run"
    assert (
        main(
            [
                "train",
                "--dataset-path",
                synth_root,
                "--checkpoint-dir",
                str(out),
                "--backbone",
                "edgenext_xx_small",
                "--num-experts",
                "3",
                "--img-size",
                "64",
                "--batch-size",
                "4",
                "--num-workers",
                "0",
                "--decoder-channels",
                "16",
                "--epochs",
                "4",
                "--stage1-epochs",
                "2",
                "--progressive-unfreeze",
                "--image-every",
                "2",
                "--log-every",
                "2",
            ]
        )
        == 0
    )
    return out


def test_tensorboard_holds_scalars_and_an_image(watched_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(watched_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/loss_main",
        "train/loss_moe_balance",
        "train/loss_step",
        "train/grad_norm",
        "lr/decoder",
        "lr/backbone_group0",
        "train/skipped_steps",
        "train/images_per_s",
        "train/peak_memory_mb",
        "val/IoU",
        "val/Dice",
        "val/MAE",
        "experts/block0_expert2",
    ):
        assert tag in tags, tag
    assert [e.step for e in acc.Scalars("val/IoU")] == [1, 2, 3, 4]
    images = acc.Images("val/input_gt_prediction")
    assert [e.step for e in images] == [2, 4] and images[0].width == 3 * 64 and images[0].height == 2 * 64


def test_history_has_every_epoch_and_event(watched_run):
    records = history.read(watched_run / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3, 4]
    assert [(r["type"], r["epoch"]) for r in records if r["type"] != "epoch"] == [
        ("stage", 1),
        ("stage", 3),
        ("unfreeze", 4),
    ]
    assert all(r["grad_norm"] > 0 and r["peak_memory_mb"] > 0 for r in records if r["type"] == "epoch")
    previous = 0
    for r in (r for r in records if r["type"] == "epoch"):
        assert r["steps"] == r["global_step"] - previous > 0 and r["num_workers"] == 0
        previous = r["global_step"]
        assert 0 < r["step_time_s"] and r["steps"] * r["step_time_s"] <= r["train_time_s"] * 1.5
        assert r["loop_ratio"] == pytest.approx(r["train_time_s"] / (r["steps"] * r["step_time_s"]), rel=0.01)
        assert 0 <= r["data_wait_s"] < r["train_time_s"] and r["val_time_s"] > 0


def test_report_writes_html_and_pngs(watched_run, capsys):
    assert main(["report", str(watched_run)]) == 0
    page = (watched_run / "report.html").read_text()
    assert (
        page.count("data:image/png;base64,") == 6 and "Best epoch" in page and "unfreeze at epoch 4" in page
    )
    assert "Where it fails: the 6 validation images with the lowest IoU" in page
    assert "Time per epoch" in page and "training pass s" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert sorted(os.listdir(watched_run / "report")) == [
        "experts.png",
        "iou.png",
        "loss.png",
        "lr.png",
        "predictions.png",
        "worst.png",
    ]


def test_report_on_a_crashed_run(watched_run, tmp_path):
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "config.yaml").write_text((watched_run / "config.yaml").read_text())
    lines = (watched_run / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])
    assert main(["report", str(crashed)]) == 0
    page = (crashed / "report.html").read_text()
    assert "no checkpoint yet" in page and page.count("data:image/png;base64,") == 4


def test_one_expert_per_block_draws_no_routing_plot(watched_run, tmp_path):
    import json

    single = tmp_path / "single"
    single.mkdir()
    (single / "config.yaml").write_text((watched_run / "config.yaml").read_text())
    records = [json.loads(line) for line in (watched_run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r.get("expert_usage"):
            r["expert_usage"] = [[1.0] for _ in r["expert_usage"]]  # what --num-experts 1 records
    (single / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(single), "--no-predictions"]) == 0
    assert sorted(os.listdir(single / "report")) == ["iou.png", "loss.png", "lr.png"]
    assert "Expert usage" not in (single / "report.html").read_text()


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is this a camodet run folder" in capsys.readouterr().err


def test_best_epoch_is_the_runs_own_choice_not_an_abandoned_branchs():
    from camodet.evaluation.report import best_record

    def epoch(n, iou, best):
        return {"type": "epoch", "epoch": n, "stage": 2, "val": {"IoU": iou}, "best_epoch": best}

    first = [epoch(1, 0.5, 1), epoch(2, 0.6, 2), epoch(3, 0.8, 3)]
    # resumed in place from epoch 2's checkpoint (the branch with epoch 3 left behind): 3 and 4 again
    again = [epoch(3, 0.65, 3), epoch(4, 0.62, 3)]
    assert best_record(first + again) == again[0]
    assert best_record(first) == first[2]
    assert best_record([{"type": "epoch", "epoch": 1, "best_epoch": 0}]) is None  # --val-fraction 0
