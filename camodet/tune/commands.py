"""Command lines a tuning tool prints for the user to paste: the `train` command it was given, with
some flags dropped and some settings set (the LR range test's suggestion, a sweep's best trial)."""

import shlex

from ..fields import base_type, flag_of
from .space import setting


def drop_flags(argv: list[str], flags: set[str]) -> list[str]:
    """`argv` without the given flags (`--x V`, `--x V W`, `--x=V`, and `--no-x` of a switch)."""
    kept, skipping = [], False
    for a in argv:
        name = a.split("=", 1)[0]
        if skipping and not a.startswith("--"):
            continue
        skipping = False
        if name in flags or (name.startswith("--no-") and "--" + name[5:] in flags):
            skipping = "=" not in a
            continue
        kept.append(a)
    return kept


def setting_flags(settings: dict) -> list[str]:
    """{dotted setting: value} as `train` flags: `--stage2-lr 0.0002`, `--use-ema` / `--no-use-ema`."""
    out = []
    for name, value in settings.items():
        f = setting(name)[1]
        flag, kind = flag_of(f), base_type(f.type)
        if kind is bool:
            out.append(flag if value else "--no-" + flag[2:])
        elif kind is list:
            out += [flag, *map(str, value)]
        elif value is not None:
            out += [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return out


def flags_of(settings: dict) -> set[str]:
    return {flag_of(setting(name)[1]) for name in settings}


def train_command(program: list[str], argv: list[str], settings: dict, drop: set[str] = frozenset()) -> str:
    """The `train` command: `argv` (another subcommand's train flags) without `drop` and without
    the flags of `settings`, which are then given their new values."""
    kept = drop_flags(argv, set(drop) | flags_of(settings))
    return shlex.join([*program, "train", *kept, *setting_flags(settings)])
