"""Every command's options are typed dataclasses: the parsers come from them alone (no flag is
declared by hand), every option has a help text, README's reference is the generated one, and bad
values are one line with exit code 2 through the command line, --device among them."""

import argparse
import inspect
import os
import re

import pytest

from camodet import cli
from camodet.config import ModelConfig, TrainConfig
from camodet.errors import EXIT_DIVERGED, EXIT_USAGE, CamodetError
from camodet.fields import flag_of, flags, leaves, make, reference
from camodet.options import EvaluateOptions, InferenceOptions, SweepSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_argument_is_added_by_the_generator(monkeypatch):
    callers = []
    real = argparse._ActionsContainer.add_argument

    def recorded(self, *args, **kwargs):
        caller = inspect.stack()[1]
        callers.append((os.path.basename(caller.filename), caller.function, args[0]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", recorded)
    cli.build_parser()
    outside = [c for c in callers if c[0] != "fields.py" and c[2] not in ("-h",)]
    assert callers and not outside, f"add_argument outside camodet/fields.py's generator: {outside[:5]}"


def subcommand_parsers() -> dict:
    """{command name: its argparse parser}."""
    root = cli.build_parser()
    found = {}

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
        if words:
            found[" ".join(words)] = parser

    walk(root, [])
    return found


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c.options is not None], ids=lambda c: c.name)
def test_every_option_is_a_dataclass_field_with_help(command):
    parser = subcommand_parsers()[command.name]
    settings = {leaf.dest: leaf for leaf in leaves(command.options)}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == "config":
            continue
        assert action.dest in settings, f"{command.name}: {action.option_strings or action.dest} is no field"
        leaf = settings[action.dest]
        assert leaf.field.metadata["help"].strip(), f"{command.name}: {flag_of(leaf.field)} has no help"
    taken = {a.dest for a in parser._actions}
    assert set(settings) <= taken, f"{command.name}: fields without a flag: {set(settings) - taken}"


def test_readme_reference_is_the_generated_one():
    text = open(os.path.join(ROOT, "README.md")).read()
    found = re.search(r"<!-- cli-reference.*?-->\n(.*?)\n<!-- /cli-reference -->", text, re.S)
    assert found, "README.md has no <!-- cli-reference --> section"
    assert found.group(1).strip() == reference(cli.COMMANDS).strip(), (
        "README's CLI reference differs from the options: paste 'camodet help' between the markers"
    )


def test_help_command_prints_the_reference(capsys):
    assert cli.main(["help"]) == 0
    out = capsys.readouterr().out
    assert (
        "### camodet evaluate" in out
        and "| `--batch-size` | `8` |" in out
        and "| `--batch-size` | `4` |" in out
    )


def test_the_inference_commands_share_one_options_class():
    for cls, only in (
        ("evaluate", None),
        ("predict", None),
        ("export", {"weights"}),
        ("app", {"weights", "device"}),
    ):
        options = next(c.options for c in cli.COMMANDS if c.name == cls)
        inference = {leaf.path[-1] for leaf in leaves(options) if leaf.path[0] == "inference"}
        assert inference == (only or {leaf.path[-1] for leaf in leaves(InferenceOptions)}), cls


def test_model_summary_and_the_tuning_commands_read_train_s_own_defaults():
    summary = next(c.options for c in cli.COMMANDS if c.name == "model summary")()
    assert summary.train.model == ModelConfig() and summary.train.data.img_size == TrainConfig().data.img_size
    for name in ("plan", "tune lr", "sweep"):
        options = next(c.options for c in cli.COMMANDS if c.name == name)()
        assert options.train == TrainConfig(), name
    # the sweep's own flags are its dataclass's: a trial's train command keeps every train flag
    from camodet.tune.commands import drop_flags

    argv = ["--space", "s.yaml", "--trials", "3", "--epochs", "4", "--no-use-ema", "--prune-warmup", "2"]
    assert drop_flags(argv, flags(SweepSettings)) == ["--epochs", "4", "--no-use-ema"]


def test_make_builds_options_through_the_gate():
    opts = make(EvaluateOptions, dataset_path=["a"], num_workers=0, batch_size="3")
    assert opts.inference.num_workers == 0 and opts.inference.batch_size == 3 and opts.dataset_path == ["a"]
    with pytest.raises(CamodetError, match="--batch-size must be at least 1 \\(got 0\\)"):
        make(EvaluateOptions, dataset_path=["a"], batch_size=0)


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == EXIT_USAGE, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("camodet: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--dataset-path", "."],
        ["tune", "lr", "--dataset-path", "."],
        ["predict", "ckpt.pth", "img.jpg", "--out", "o"],
        ["evaluate", "ckpt.pth", "--dataset-path", "."],
    ],
    ids=lambda c: c[0] if c[0] != "tune" else "tune lr",
)
def test_a_device_that_is_not_there_is_one_line(command, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = one_line_error(capsys, [*command, "--device", "cuda"])
    assert "--device cuda: this machine has no CUDA GPU" in err and "the devices here are cpu" in err
    err = one_line_error(capsys, [*command, "--device", "banana"])
    assert "--device: 'banana' is not valid" in err and "cuda:N" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = one_line_error(capsys, [*command, "--device", "cuda:3"])
    assert "--device cuda:3: this machine has no such device; the devices here are cuda:0" in err


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["predict", "c.pth", "i.jpg", "--out", "o", "--batch-size", "0"],
            "--batch-size must be at least 1 (got 0)",
        ),
        (
            ["evaluate", "c.pth", "--dataset-path", ".", "--batch-size", "0"],
            "--batch-size must be at least 1 (got 0)",
        ),
        (
            ["predict", "c.pth", "i.jpg", "--out", "o", "--num-workers", "-1"],
            "--num-workers must be >= 0 or auto",
        ),
        (
            ["predict", "c.pth", "i.jpg", "--out", "o", "--threshold", "1"],
            "--threshold must be between 0 and 1",
        ),
        (["evaluate", "c.pth", "--dataset-path", ".", "--workers", "-2"], "--workers must be >= 0 (got -2)"),
        (["export", "c.pth", "out", "--min-agreement", "2"], "--min-agreement must be above 0 and at most 1"),
        (["synth", "out", "--train", "0"], "--train must be at least 1 (got 0)"),
        (["app", "c.pth", "--port", "70000"], "--port must be between 1 and 65535"),
        (
            ["model", "summary", "--decoder-channels", "12"],
            "--decoder-channels must be a positive multiple of 8",
        ),
        (["tune", "lr", "--dataset-path", ".", "--steps", "3"], "--steps must be at least 10 (got 3)"),
        (["sweep", "--dataset-path", ".", "--trials", "0"], "--trials must be at least 1 (got 0)"),
        (["plan", "--candidates", "4", "0"], "--candidates must be at least 1 (got 0)"),
    ],
    ids=lambda x: x if isinstance(x, str) else " ".join(x[:2]),
)
def test_bad_values_are_one_line_with_exit_code_2(argv, says, capsys):
    assert says in one_line_error(capsys, argv)


def test_save_preds_that_is_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "maps.png"
    afile.write_bytes(b"x")
    err = one_line_error(
        capsys, ["evaluate", "c.pth", "--dataset-path", str(tmp_path), "--save-preds", str(afile)]
    )
    assert f"--save-preds {afile}: exists and is not a folder" in err


def test_exit_codes_come_from_the_error_classes(monkeypatch, capsys):
    from camodet.data.io import DataError
    from camodet.engine.guard import DivergenceError
    from camodet.launch import ProcessFailure
    from camodet.models.backbone import BackboneError
    from camodet.runs.errors import CheckpointError
    from camodet.serving.app import AppError
    from camodet.serving.export import ExportError
    from camodet.serving.fetch import HubError

    for error in (DataError, CheckpointError, BackboneError, ExportError, HubError, AppError, ProcessFailure):
        assert issubclass(error, CamodetError) and error.exit_code == EXIT_USAGE, error
    assert issubclass(DivergenceError, CamodetError) and DivergenceError.exit_code == EXIT_DIVERGED

    def diverges(options, call):
        raise DivergenceError("diverged 4 times; lower --lr")

    inspect_command = next(c for c in cli.COMMANDS if c.name == "inspect")
    monkeypatch.setattr(
        cli,
        "COMMANDS",
        tuple(
            c if c is not inspect_command else cli.Command("inspect", c.options, diverges)
            for c in cli.COMMANDS
        ),
    )
    assert cli.main(["inspect", "x.pth"]) == EXIT_DIVERGED
    assert capsys.readouterr().err.strip() == "camodet: error: diverged 4 times; lower --lr"
