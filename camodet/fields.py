"""Option fields and the one gate every value passes. A command's options are a dataclass whose
fields are made with `opt` (a setting: its help, flag, choices and range) or `section` (another
such dataclass); the command line's parser (`add_options`), YAML files (`merge_into`) and
settings built in Python (`check_fields`) all go through `coerce` and `check_value`, so a flag is
declared once and checked once, and a bad value is one line naming the flag, where it came from
and what is allowed. No torch here."""

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import field
from typing import Any

import yaml

from .errors import ConfigError

CONFIG_FLAG_HELP = "YAML file of settings (flags typed on the command line override it)"


def opt(
    default,
    help: str,
    flag: str | None = None,
    choices=None,
    *,
    min=None,
    max=None,
    above=None,
    below=None,
    multiple_of=None,
    positional: bool = False,
    nargs=None,
    metavar: str | None = None,
    required: bool = False,
    aliases: dict | None = None,
):
    """A setting: its default, help text and flag (default --field-name), its choices (for a list:
    of each item), its range (min/max inclusive, above/below exclusive) and how the command line
    takes it (positional, nargs, required, aliases such as {'--no-amp': 'off'})."""
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "min": min,
        "max": max,
        "above": above,
        "below": below,
        "multiple_of": multiple_of,
        "positional": positional,
        "nargs": nargs,
        "metavar": metavar,
        "required": required,
        "aliases": aliases or {},
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, *, only: tuple | None = None, flatten: bool = False, **defaults):
    """A field holding another options dataclass, whose settings join this command's. `only`: the
    names of its settings this command takes (the others keep their defaults and get no flag);
    `defaults`: this command's own defaults for some of them; `flatten`: its settings' names sit at
    this level, in flags' destinations and YAML keys alike (train's sections inside plan's options)."""
    return field(
        default_factory=lambda: cls(**defaults),
        metadata={"section": True, "only": tuple(only) if only else None, "flatten": flatten},
    )


# -- value types that parse text --------------------------------------------------------------


def workers(value) -> "int | str":
    """a count, or auto (resolved for the device where the command runs)"""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return int(value)


def device_name(value) -> str:
    """auto, cpu, cuda, cuda:N or mps (whether this machine has it is checked apart)"""
    text = str(value).strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise ValueError(text)
    return text


_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """'8h45m', '90m', '1.5h', '3600s' or a plain number of seconds -> seconds."""
    t = str(text).strip().lower().replace(" ", "")
    parts = re.fullmatch(r"((\d+(\.\d+)?)[dhms])+", t)
    if parts:
        seconds = sum(float(v) * _DURATION_UNITS[u] for v, _, u in re.findall(r"(\d+(\.\d+)?)([dhms])", t))
    else:
        try:
            seconds = float(t)
        except ValueError:
            seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{flag} {text!r}: give a positive duration such as 8h45m, 90m or 3600s")
    return seconds


# -- what a field is ----------------------------------------------------------------------------


def base_type(tp):
    """int for Optional[int]; list for list[str]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return base_type(args[0])
    return origin or tp


def item_type(tp):
    """The items' type of a list field (str for list[str], int for list[int])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return item_type([a for a in typing.get_args(tp) if a is not type(None)][0])
    args = typing.get_args(tp)
    return args[0] if args else str


def is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def is_section(f: dataclasses.Field) -> bool:
    """A field that holds settings of its own (made with `section`, or a dataclass such as
    TrainConfig's data, model, ...)."""
    return bool(f.metadata.get("section")) or (isinstance(f.type, type) and dataclasses.is_dataclass(f.type))


def flag_of(f: dataclasses.Field) -> str:
    """The flag that sets this field (a positional argument is named by its field)."""
    if f.metadata.get("positional"):
        return f.name.upper()
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(tp, tp.__name__)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting of an options dataclass: its field and where it sits (`path`: the attribute
    names from the options object down, `dest`: its name on the command line and in YAML)."""

    field: dataclasses.Field
    path: tuple[str, ...]
    dest: str
    group: str  # the section it is listed under in --help


def leaves(cls, prefix: tuple = (), dest_prefix: tuple = (), only=None, group: str = "") -> list[Leaf]:
    """Every setting of `cls` a command takes, through its sections, in declaration order.
    `only`: names (or dotted paths into sections) of the settings taken; None: all."""
    out = []
    for f in dataclasses.fields(cls):
        inner = _within(only, f.name)
        if inner is False:
            continue
        if is_section(f):
            flat = f.metadata.get("flatten")
            out += leaves(
                f.type,
                prefix + (f.name,),
                dest_prefix if flat else dest_prefix + (f.name,),
                inner if inner is not None else f.metadata.get("only"),
                group if flat else f.name,
            )
        else:
            out.append(Leaf(f, prefix + (f.name,), ".".join(dest_prefix + (f.name,)), group))
    return out


def flags(cls) -> set[str]:
    """The flags of every setting of `cls` (its aliases too): what a command line of it may hold."""
    return {flag_of(leaf.field) for leaf in leaves(cls) if not leaf.field.metadata.get("positional")} | {
        alias for leaf in leaves(cls) for alias in leaf.field.metadata["aliases"]
    }


def _within(only, name: str):
    """What of `only` applies inside `name`: None (all of it), the dotted rest, or False (none)."""
    if only is None or name in only:
        return None
    rest = tuple(p.split(".", 1)[1] for p in only if p.startswith(name + "."))
    return rest or False


# -- the gate -----------------------------------------------------------------------------------


def coerce(value, f: dataclasses.Field, source: str):
    """The one gate every value passes, typed on the command line or read from YAML (or a saved
    config): its type, its choices and its range. Errors are one line naming the flag, where the
    value came from and what is allowed."""
    tp = base_type(f.type)
    where = f"{flag_of(f)}: {value!r}" + ("" if source == "the command line" else f" in {source}")
    if value is None:
        if is_optional(f.type):
            return None
        raise ConfigError(f"{flag_of(f)}: needs a value in {source} (got an empty one)")
    if tp is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        kind = item_type(f.type)
        out = [_typed(v, kind, f, f"{flag_of(f)}: {v!r}", source) for v in items]
        choices = f.metadata.get("choices")
        for v in out:
            if choices and v not in choices:
                raise ConfigError(f"{flag_of(f)} {v!r} is not one of {', '.join(choices)}")
            check_value(f, v)
        return out
    value = _typed(value, tp, f, where, source)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where} is not one of {', '.join(choices)}")
    check_value(f, value)
    return value


def _typed(value, tp, f: dataclasses.Field, where: str, source: str):
    """`value` as a `tp` (bool, int, float, text, or a parser function such as workers)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} is not true or false")
    if callable(tp) and not isinstance(tp, type):  # a parser function such as workers()
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} is not valid: {tp.__doc__.strip().splitlines()[0]}") from None
    if tp in (int, float):
        number = _number(value)
        if number is None or (tp is int and isinstance(number, float) and not number.is_integer()):
            raise ConfigError(
                f"{flag_of(f)}: cannot read {value!r} from {source} as {tp.__name__} "
                f"(expected {_type_name(tp)})"
            )
        return tp(number)
    choices = f.metadata.get("choices")
    if choices and isinstance(value, bool) and {"on", "off"} <= set(choices):
        # YAML 1.1 reads unquoted on/off/yes/no as booleans: `channels_last: on` means "on".
        value = "on" if value else "off"
    if choices and isinstance(value, bool) and "off" in choices and not value:
        value = "off"  # `amp: off` in YAML
    if choices and isinstance(value, bool):
        return value  # `amp: on`: not one of the choices, said as such by the caller
    return str(value)


def _number(value):
    """int or float from a number or its text; None for anything else. YAML's true/false would
    pass int() as 1/0, and int(3.7) would quietly be 3: both are refused by the caller."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    for parse in (int, float):
        try:
            return parse(str(value).strip())
        except ValueError:
            pass
    return None


def check_value(f: dataclasses.Field, value) -> None:
    """A number's range (and its multiple) as the field declares it; one line otherwise."""
    m = f.metadata
    lo, hi, above, below, step = (m.get(k) for k in ("min", "max", "above", "below", "multiple_of"))
    if all(b is None for b in (lo, hi, above, below, step)) or not isinstance(value, (int, float)):
        return
    if isinstance(value, bool):
        return
    ok = (
        (lo is None or value >= lo)
        and (hi is None or value <= hi)
        and (above is None or value > above)
        and (below is None or value < below)
        and (step is None or value % step == 0)
    )
    if not ok or (isinstance(value, float) and math.isnan(value)):
        auto = " or auto" if base_type(f.type) is workers else ""
        shown = f"{value:g}" if isinstance(value, float) else value
        raise ConfigError(f"{flag_of(f)} must be {range_words(m)}{auto} (got {shown})")


def range_words(m) -> str:
    """A field's range in words: 'at least 1', '>= 0', 'positive', 'between 0 and 1', ..."""
    lo, hi, above, below, step = (m.get(k) for k in ("min", "max", "above", "below", "multiple_of"))
    if step is not None:
        return f"a positive multiple of {step:g}"
    if above is not None and below is not None:
        return f"between {above:g} and {below:g}"
    if above is not None and hi is not None:
        return f"above {above:g} and at most {hi:g}"
    if lo is not None and below is not None:
        return f"in [{lo:g}, {below:g})"
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}"
    if above is not None:
        return "positive" if above == 0 else f"above {above:g}"
    if below is not None:
        return f"below {below:g}"
    if hi is not None:
        return f"at most {hi:g}"
    return ">= 0" if lo == 0 else f"at least {lo:g}"


def check_fields(obj) -> None:
    """Choices and ranges of every setting of an options object built in Python (the command
    line and YAML check theirs as they are read)."""
    for leaf in leaves(type(obj)):
        value = get(obj, leaf.path)
        items = value if isinstance(value, list) else [value]
        choices = leaf.field.metadata.get("choices")
        for v in items:
            if v is None:
                continue
            if choices and v not in choices:
                raise ConfigError(f"{flag_of(leaf.field)}: {v!r} is not one of {', '.join(choices)}")
            check_value(leaf.field, v)


def get(obj, path: tuple):
    for name in path:
        obj = getattr(obj, name)
    return obj


def put(obj, path: tuple, value) -> None:
    for name in path[:-1]:
        obj = getattr(obj, name)
    setattr(obj, path[-1], value)


# -- YAML ---------------------------------------------------------------------------------------


def load_yaml(path: str, flag: str = "--config") -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} file {path} does not exist; check the {flag} path")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag} file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def merge_into(obj, updates: dict, source: str, cli: str = "camodet train"):
    """Apply nested {section: {setting: value}} or flat {setting: value} onto `obj` (names as
    `leaves` gives them: a flat name finds its setting in any section)."""
    by_dest = {leaf.dest: leaf for leaf in leaves(type(obj))}
    by_name: dict[str, Leaf] = {}
    for leaf in by_dest.values():
        by_name.setdefault(leaf.path[-1], leaf)
    for key, val in _flatten(updates or {}, by_dest):
        key = key.replace("-", "_")
        leaf = by_dest.get(key) or (by_name.get(key) if "." not in key else None)
        if leaf is None:
            raise ConfigError(f"unknown setting {key!r} in {source}; see '{cli} --help'")
        put(obj, leaf.path, coerce(val, leaf.field, source))
    return obj


def _flatten(updates: dict, by_dest: dict, prefix: str = ""):
    """(dotted key, value) pairs: a nested mapping whose key is a section is entered."""
    sections = {d.rsplit(".", 1)[0] for d in by_dest if "." in d}
    for key, val in updates.items():
        name = prefix + str(key).replace("-", "_")
        if isinstance(val, dict) and any(s == name or s.startswith(name + ".") for s in sections):
            yield from _flatten(val, by_dest, name + ".")
        else:
            yield name, val


# -- the command line ---------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, cls, config_flag: bool = True) -> None:
    """One argument per setting of `cls` (positional or flag, in its section's group); defaults
    are suppressed so that only what the user typed overrides YAML and the defaults."""
    if config_flag:
        parser.add_argument("--config", help=CONFIG_FLAG_HELP)
    groups: dict[str, Any] = {}
    for leaf in leaves(cls):
        f, meta = leaf.field, leaf.field.metadata
        target = parser
        if leaf.group and not meta.get("positional"):
            target = groups.get(leaf.group) or groups.setdefault(
                leaf.group, parser.add_argument_group(leaf.group)
            )
        tp = base_type(f.type)
        kw: dict[str, Any] = {"help": meta["help"], "default": argparse.SUPPRESS}
        if meta.get("positional"):
            if meta.get("nargs"):
                kw["nargs"] = meta["nargs"]
            kw["metavar"] = meta.get("metavar") or f.name.upper()
            target.add_argument(leaf.dest, **kw)
            continue
        kw["dest"] = leaf.dest
        if meta.get("required"):
            kw["required"] = True
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            # Text here, typed and checked by coerce: flags and YAML share one validation path.
            kw["type"] = str
            if tp is list:
                kw["nargs"] = meta.get("nargs") or "+"
                kw["action"] = "extend"
            choices = meta.get("choices")
            kw["metavar"] = meta.get("metavar") or (
                "{" + ",".join(choices) + "}" if choices else "PATH" if tp is list else f.name.upper()
            )
        target.add_argument(flag_of(f), **kw)
        for alias, const in meta["aliases"].items():
            target.add_argument(
                alias,
                dest=leaf.dest,
                action="store_const",
                const=const,
                default=argparse.SUPPRESS,
                help=f"same as {flag_of(f)} {const}",
            )


def make(cls, **settings):
    """Options of `cls` built in Python: its defaults with these settings (by name, in any of its
    sections: make(EvaluateOptions, dataset_path=[root], num_workers=0)), through the gate."""
    return merge_into(cls(), settings, "the call")


def options_from_args(cls, args: argparse.Namespace, cli: str = "camodet"):
    """The options of `cls`: defaults, then the --config YAML file, then the flags typed."""
    obj = cls()
    if getattr(args, "config", None):
        merge_into(obj, load_yaml(args.config), args.config, cli)
    by_dest = {leaf.dest: leaf for leaf in leaves(cls)}
    for key, val in vars(args).items():
        if key in by_dest:
            put(obj, by_dest[key].path, coerce(val, by_dest[key].field, "the command line"))
    return obj


def add_version(parser: argparse.ArgumentParser, version: str) -> None:
    """The program's --version (argparse's own action: it prints and exits)."""
    parser.add_argument("--version", action="version", version=version)


# -- the reference ------------------------------------------------------------------------------


def reference_table(cls, leave_out: str | None = None) -> str:
    """A Markdown table of every option of `cls`: its flag (or positional name), default, what it
    allows and its help. `leave_out`: a section whose options another table lists."""
    rows = ["| option | default | allowed | what it does |", "|---|---|---|---|"]
    defaults = cls()
    for leaf in leaves(cls):
        if leave_out and leaf.path[0] == leave_out:
            continue
        f, meta = leaf.field, leaf.field.metadata
        default = get(defaults, leaf.path)
        if meta.get("positional"):
            name = f"`{meta.get('metavar') or f.name.upper()}`"
        elif base_type(f.type) is bool:
            name = f"`{flag_of(f)}` / `--no-{flag_of(f)[2:]}`"
        else:
            name = f"`{flag_of(f)}`"
        name += "".join(f", `{alias}`" for alias in meta["aliases"])
        required = meta.get("required") or (meta.get("positional") and default is None)
        if required:
            shown = "(required)"
        elif default is None or default == []:
            shown = ""
        else:
            shown = f"`{' '.join(map(str, default)) if isinstance(default, list) else default}`"
        bounds = any(meta.get(k) is not None for k in ("min", "max", "above", "below", "multiple_of"))
        allowed = ", ".join(meta["choices"]) if meta.get("choices") else range_words(meta) if bounds else ""
        rows.append(f"| {name} | {shown} | {allowed} | {meta['help'].replace('|', '/')} |")
    return "\n".join(rows)


def reference(commands) -> str:
    """The CLI reference: a table per command (each with .name, .help, .options), every option with
    its default, range and help; a command that nests all of train's options lists only its own."""
    parts = []
    for c in (c for c in commands if c.options):
        nested = [leaf for leaf in leaves(c.options) if leaf.path[0] == "train"]
        whole = len(nested) > 20
        also = "Every option of `camodet train`, and:\n\n" if whole else ""
        table = reference_table(c.options, leave_out="train" if whole else None)
        parts.append(f"### camodet {c.name}\n\n{c.help}.\n\n{also}{table}")
    return "\n\n".join(parts)
