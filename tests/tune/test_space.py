"""The search space is checked against the config before anything trains; commands are rebuilt
from train flags and settings."""

import shlex

import pytest

from camodet.config import TrainConfig
from camodet.errors import ConfigError
from camodet.tune.commands import drop_flags, train_command
from camodet.tune.space import SearchSpace


def base() -> TrainConfig:
    cfg = TrainConfig()
    cfg.stages.epochs, cfg.stages.stage1_epochs = 4, 2
    return cfg


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"optim.learning_rate": {"low": 1e-4, "high": 1e-2}}, "'optim.learning_rate' is not a setting"),
        ({"lr": {"low": 1e-4, "high": 1e-2}}, "'lr' is not a setting"),
        ({"optim.lr": {"low": 1e-2, "high": 1e-4}}, "low .* must be below high"),
        ({"optim.lr": {"low": 0, "high": 1e-2, "log": True}}, "log range needs low > 0"),
        ({"optim.ema_decay": {"low": 0.9, "high": 1.5}}, "optim.ema_decay=1.5 is impossible: --ema-decay"),
        ({"stages.stage1_epochs": {"low": 1, "high": 6}}, "stage1_epochs=6 is impossible: --stage1-epochs"),
        ({"stages.stage1_epochs": {"low": 1, "high": 2.5}}, "integer setting: high 2.5 must be whole"),
        ({"model.backbone": {"low": 1, "high": 2}}, "not a number: give a list of choices"),
        ({"optim.amp": ["bf16", "fp8"]}, "'fp8' .* is not one of"),
        ({"optim.lr": [0.001]}, "at least two different choices"),
        ({"recipe": {"a": {"optim.lr": 1e-3}, "b": {"optim.nope": 1}}}, "'optim.nope' is not a setting"),
        ({"recipe": {"a": {"optim.lr": 1e-3}}, "optim.lr": [1e-3, 2e-3]}, "optim.lr searched twice"),
    ],
)
def test_bad_spaces_are_refused_in_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as e:
        SearchSpace(raw, base())
    assert "\n" not in str(e.value)


class FixedTrial:
    """What a trial answers: the first choice, or the range's low end."""

    def suggest_float(self, name, low, high, log=False, step=None):
        return low

    def suggest_int(self, name, low, high, log=False, step=1):
        return low

    def suggest_categorical(self, name, choices):
        return choices[-1]


def test_ranges_choices_and_named_configurations_give_settings():
    space = SearchSpace(
        {
            "optim.lr": {"low": 3e-4, "high": 1e-2, "log": True},
            "stages.stage1_epochs": {"low": 1, "high": 3},
            "optim.use_ema": [False, True],
            "recipe": {
                "conservative": {"optim.stage2_lr": 1.5e-4, "optim.ema_decay": 0.999},
                "maximum": {"optim.stage2_lr": 4e-4, "optim.ema_decay": 0.99},
            },
        },
        base(),
    )
    assert [d.kind for d in space.dimensions] == ["float", "int", "choice", "named"]
    assert space.suggest(FixedTrial()) == {
        "optim.lr": 3e-4,
        "stages.stage1_epochs": 1,
        "optim.use_ema": True,
        "optim.stage2_lr": 4e-4,
        "optim.ema_decay": 0.99,
    }


def test_train_command_replaces_the_searched_flags():
    argv = ["--dataset-path", "a", "b", "--lr=0.1", "--no-use-ema", "--stage2-lr", "2e-4", "--img-size", "64"]
    assert drop_flags(argv, {"--dataset-path", "--use-ema"}) == [
        "--lr=0.1",
        "--stage2-lr",
        "2e-4",
        "--img-size",
        "64",
    ]
    cmd = train_command(
        ["camodet"], argv, {"optim.lr": 0.00031622776, "optim.use_ema": True, "stages.stage1_epochs": 2}
    )
    assert shlex.split(cmd) == [
        "camodet", "train", "--dataset-path", "a", "b", "--stage2-lr", "2e-4", "--img-size", "64",
        "--lr", "0.000316228", "--use-ema", "--stage1-epochs", "2",
    ]  # fmt: skip


def test_a_missing_or_unreadable_space_file_names_the_space_flag(tmp_path):
    missing = r"^--space file .*nope.yaml does not exist; check the --space path$"
    with pytest.raises(ConfigError, match=missing) as e:
        SearchSpace.load(str(tmp_path / "nope.yaml"), base())
    assert "--config" not in str(e.value)
    (tmp_path / "list.yaml").write_text("- optim.lr\n")
    with pytest.raises(ConfigError, match=r"^--space file .*list.yaml must hold a mapping"):
        SearchSpace.load(str(tmp_path / "list.yaml"), base())
