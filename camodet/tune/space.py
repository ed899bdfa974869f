"""A sweep's search space, read from YAML and checked against the config before anything trains.

Keys are the config's dotted names (`optim.lr`, `stages.stage1_epochs`); a value is a range
`{low: 0.0003, high: 0.01, log: true}` (optionally `step:`), int or float as the setting is, or a
list of choices. A key that is not a setting names a set of configurations to choose between, each
a mapping of settings (the reference workflow's conservative / aggressive / maximum):

    recipe:
      conservative: {optim.lr: 0.00025, optim.stage2_lr: 0.00015}
      aggressive: {optim.lr: 0.0004, optim.stage2_lr: 0.00018}
"""

import copy
import dataclasses
import json
from dataclasses import dataclass

from ..config import TrainConfig, merge
from ..errors import ConfigError
from ..fields import _number, base_type, leaves, load_yaml

RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Dimension:
    """One searched name: a setting's range or choices, or named configurations (`named`)."""

    name: str
    kind: str  # int | float | choice | named
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    named: dict | None = None  # configuration name -> {dotted setting: value}

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def searched(self) -> list[str]:
        """The settings a set of named configurations changes (any of them)."""
        return sorted({n for settings in self.named.values() for n in settings})

    def settings(self, value) -> dict:
        """{dotted setting: value} that the suggested `value` stands for."""
        return dict(self.named[value]) if self.kind == "named" else {self.name: value}


TRAIN_SETTINGS = {leaf.dest: leaf for leaf in leaves(TrainConfig)}  # by dotted name: optim.lr, ...


def setting(name: str) -> tuple[str, dataclasses.Field]:
    """(section, field) of a dotted name; a one-line error naming it otherwise."""
    leaf = TRAIN_SETTINGS.get(name.replace("-", "_"))
    target = (leaf.path[0], leaf.field) if leaf is not None else None
    if target is None:
        raise ConfigError(
            f"search space: {name!r} is not a setting; use the config's dotted names such as optim.lr or "
            f"stages.stage1_epochs (see 'camodet train --help' and a run's config.yaml)"
        )
    return target


def nested(settings: dict) -> dict:
    """{'optim.lr': x} -> {'optim': {'lr': x}}, as merge() reads."""
    out: dict = {}
    for name, value in settings.items():
        section, _, key = name.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def apply(base: TrainConfig, settings: dict, source: str) -> TrainConfig:
    """A copy of `base` with the settings applied through the config's one gate (merge, fields.coerce)."""
    return merge(copy.deepcopy(base), nested(settings), source=source)


def check(base: TrainConfig, settings: dict, where: str) -> dict:
    """The settings are valid values and make a valid configuration with the base; returns them
    typed as the config holds them (YAML reads `1e-4` as text: it is the number 0.0001 here)."""
    for name in settings:
        setting(name)
    try:
        cfg = apply(base, settings, source=f"the search space ({where})").validate(check_paths=False)
    except ConfigError as e:
        raise ConfigError(f"search space: {where} is impossible: {e}") from None
    return {name: getattr(getattr(cfg, setting(name)[0]), setting(name)[1].name) for name in settings}


def parse_range(name: str, spec: dict, kind: type) -> Dimension:
    """A `{low, high, log?, step?}` range of a numeric setting as a Dimension; one-line
    ConfigError where it is not one (unknown keys, not a number, low >= high, a log range from
    <= 0 or with a step)."""
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise ConfigError(
            f"search space: {name}: a range is {{low: A, high: B}} with optional log: true and step: S "
            f"(got keys {', '.join(sorted(map(str, spec)))})"
        )
    if kind not in (int, float):
        raise ConfigError(f"search space: {name} is not a number: give a list of choices instead of a range")
    log = bool(spec.get("log", False))
    for label in ("low", "high", "step"):
        v = spec.get(label)
        if v is not None and _number(v) is None:
            raise ConfigError(f"search space: {name}: {label} {v!r} is not a number")
        if v is not None and kind is int and float(v) != int(v):
            raise ConfigError(f"search space: {name} is an integer setting: {label} {v!r} must be whole")
    low, high = _number(spec["low"]), _number(spec["high"])
    step = _number(spec["step"]) if spec.get("step") is not None else None
    if not low < high:
        raise ConfigError(f"search space: {name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"search space: {name}: a log range needs low > 0 (got {low})")
    if log and step is not None:
        raise ConfigError(f"search space: {name}: log and step exclude each other (Optuna's rule)")
    return Dimension(name, kind.__name__, float(low), float(high), log, step)


def parse_dimension(name: str, spec, base: TrainConfig) -> Dimension:
    """One key of the space, checked: its setting exists, its values are valid and possible."""
    if "." not in name:
        if not isinstance(spec, dict) or not spec or not all(isinstance(v, dict) for v in spec.values()):
            setting(name)  # says that it is not a setting
        named = {str(label): check(base, settings, f"{name}={label}") for label, settings in spec.items()}
        return Dimension(name, "named", choices=tuple(named), named=named)
    _, f = setting(name)
    if isinstance(spec, list):
        choices = [check(base, {name: value}, f"{name}={value!r}")[name] for value in spec]
        if len(choices) < 2 or len(set(map(json.dumps, choices))) != len(choices):
            raise ConfigError(f"search space: {name}: give at least two different choices (got {spec})")
        return Dimension(name, "choice", choices=tuple(choices))
    if not isinstance(spec, dict):
        raise ConfigError(f"search space: {name}: give a range {{low: A, high: B}} or a list of choices")
    dim = parse_range(name, spec, base_type(f.type))
    for end in (dim.low, dim.high):
        check(base, {name: int(end) if dim.kind == "int" else end}, f"{name}={end:g}")
    return dim


class SearchSpace:
    """The parsed space: dimensions in file order, the dotted settings they search, and the space
    as a canonical text (a study records it; a study of another space under the same name is
    refused)."""

    def __init__(self, raw: dict, base: TrainConfig):
        if not raw:
            raise ConfigError(
                "search space: the file names no settings; add e.g. optim.lr: {low: 1e-4, high: 1e-3}"
            )
        self.raw = raw
        self.dimensions = [parse_dimension(str(k), v, base) for k, v in raw.items()]
        self.searched = [n for d in self.dimensions for n in (d.searched() if d.named else [d.name])]
        twice = sorted({n for n in self.searched if self.searched.count(n) > 1})
        if twice:
            raise ConfigError(f"search space: {', '.join(twice)} searched twice; keep one entry per setting")

    @classmethod
    def load(cls, path: str, base: TrainConfig) -> "SearchSpace":
        return cls(load_yaml(path, "--space"), base)

    @property
    def fingerprint(self) -> str:
        """The space as its values are typed, keyed by name (a study compares it with its own)."""
        return json.dumps(
            {d.name: dataclasses.asdict(d) for d in self.dimensions}, sort_keys=True, default=str
        )

    def suggest(self, trial) -> dict:
        """{dotted setting: value} for this trial (a retried trial gets its original values)."""
        settings: dict = {}
        for d in self.dimensions:
            settings.update(d.settings(d.suggest(trial)))
        return settings
