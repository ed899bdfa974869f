"""A sweep's Optuna storage and study: opened with clear one-line errors (an address that cannot be
reached, a study of another search space or of other train flags under the same name) before
anything trains, and with
Optuna's heartbeat, so that a trial whose worker vanished (a lost node, kill -9) is marked failed
by the next worker and queued again with the same settings (it then resumes from its last.pth)."""

import contextlib
import json
import os
import time

from ..errors import ConfigError

SPACE_ATTR = "camodet_space"  # the search space a study was created with (canonical JSON)
COMMAND_ATTR = "camodet_train_flags"  # the base train flags, for the best trial's command
BASE_ATTR = "camodet_base"  # the base config's settings that change what a trial computes (JSON)
RUN_DIR, SETTINGS = "run_dir", "settings"  # trial attributes (a retried trial inherits them)
MAX_RETRIES = 3  # a trial interrupted this many times is left failed
SCHEMA_RACE_TRIES = 4  # openings of a new server database while another worker creates its tables
CREATION_WAIT_S = 10  # how long a study without its recorded space may still be being created


def default_storage(out_dir: str) -> str:
    return "sqlite:///" + os.path.abspath(os.path.join(out_dir, "sweep.db"))


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: shown as given (it has no password to hide)
        return url


@contextlib.contextmanager
def creating(url: str):
    """Held while a worker opens the storage and creates or loads its study. SQLite: one worker at a
    time (an flock on DB.lock), as Optuna's first-use table creation is not safe against a second
    process doing the same (UNIQUE constraint failed: alembic_version). Servers: nothing to hold."""
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): workers there start one after another
        path = None
    if not path or path == ":memory:" or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        yield  # nothing to share, or a folder that is not there: open_storage says so in one line
        return
    with open(path + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retry_callback():
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def open_storage(url: str, heartbeat: float):
    """Optuna's RDBStorage (SQLite, PostgreSQL, MySQL) with heartbeats every `heartbeat` seconds;
    ConfigError in one line where it cannot be opened."""
    import warnings

    import optuna

    sqlite = url.startswith("sqlite")
    # SQLite: several workers wait for the file's lock instead of failing; servers: fail fast.
    engine = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(SCHEMA_RACE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=int(heartbeat),
                    heartbeat_stale_trial_callback=retry_callback(),
                )
        except Exception as e:  # sqlalchemy's and the drivers' errors: "this storage cannot be used"
            # Workers on other machines creating a new database's tables at once: the loser's
            # CREATE or version stamp collides (IntegrityError, "already exists"); the tables are
            # there a moment later. SQLite workers take turns instead (creating()).
            if type(e).__name__ in ("IntegrityError", "ProgrammingError") and attempt + 1 < SCHEMA_RACE_TRIES:
                time.sleep(1.0 + attempt)
                continue
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(
                f"--storage {shown(url)}: cannot open it ({type(e).__name__}: {reason}); check the address, "
                f"that the database server runs and accepts this user, and that its driver is installed "
                f"(pip install 'camodet[tune]' brings SQLite's and PostgreSQL's)"
            ) from None


def space_difference(recorded: str, wanted: str) -> str:
    old, new = json.loads(recorded), json.loads(wanted)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")


def base_settings(base, space) -> str:
    """What every trial of a study shares besides its own settings, as canonical JSON: the base
    configuration's settings that change what a run computes (not --num-workers, logging, ...),
    less those the space searches."""
    from ..runs.resume import flat, is_hyperparameter

    searched = set(space.searched)
    kept = {k: v for k, v in flat(base.to_dict()).items() if is_hyperparameter(k) and k not in searched}
    return json.dumps(kept, default=str)


def setting_flag(name: str) -> str:
    """The train flag of a dotted setting (the name itself where this version has no such setting)."""
    from ..fields import flag_of
    from .space import setting

    try:
        return flag_of(setting(name)[1])
    except ConfigError:
        return name


def check_base(existing, name: str, url: str, wanted: str) -> None:
    """Refuse a worker whose base settings differ from those the study was started with; a study
    that recorded none (an older camodet's) takes this worker's."""
    from ..runs.resume import changed_keys

    recorded = existing.user_attrs.get(BASE_ATTR)
    if recorded is None:
        existing.set_user_attr(BASE_ATTR, wanted)
        return
    old, new = json.loads(recorded), json.loads(wanted)
    changed = changed_keys(old, new)
    if changed:
        first, others = changed[0], [setting_flag(k) for k in changed[1:4]] + ["..."] * (len(changed) > 4)
        more = f" (also {', '.join(others)})" if others else ""
        raise ConfigError(
            f"--study {name} in {shown(url)} was started with other train flags: {setting_flag(first)} "
            f"({new.get(first)} here, {old.get(first)} in the study){more}; run this worker with the flags "
            f"the study was started with, or give a new --study name (the existing study is left as it is)"
        )


def check_existing(storage, name: str, url: str, fingerprint: str, base: str | None = None) -> bool:
    """Whether study `name` exists; refused when it searches another space or was started with other
    base settings (`base`, when given), and left as it is."""
    import optuna

    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    recorded = existing.user_attrs.get(SPACE_ATTR)
    # A worker on another machine may have created the study a moment ago and not yet recorded its
    # space (two calls to the server): wait for it a little before calling the study foreign.
    for _ in range(CREATION_WAIT_S * 2):
        if recorded is not None or existing.get_trials(deepcopy=False):
            break
        time.sleep(0.5)
        recorded = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SPACE_ATTR)
    if recorded is None:
        raise ConfigError(
            f"--study {name}: {shown(url)} already holds a study of that name that camodet sweep did not "
            f"create; choose another --study name"
        )
    if recorded != fingerprint:
        raise ConfigError(
            f"--study {name} in {shown(url)} searches another space (differs in "
            f"{space_difference(recorded, fingerprint)}); use the --space it was started with, or a new "
            f"--study name (the existing study is left as it is)"
        )
    if base is not None:
        check_base(existing, name, url, base)
    return True


def open_study(
    url: str,
    name: str,
    space,
    sampler,
    pruner,
    train_flags: list[str],
    heartbeat: float,
    base: str | None = None,
):
    """The study, created on first use with the space, the base train flags and the base settings
    (`base`: base_settings()) recorded."""
    import optuna

    with creating(url):
        storage = open_storage(url, heartbeat)
        existed = check_existing(storage, name, url, space.fingerprint, base)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
        if not existed:
            if base is not None:  # before the space: a worker that sees the space sees this too
                study.set_user_attr(BASE_ATTR, base)
            study.set_user_attr(SPACE_ATTR, space.fingerprint)
            study.set_user_attr(COMMAND_ATTR, train_flags)
    return study


def load_study(url: str, name: str):
    """An existing study, for the summary; ConfigError when the storage holds none of that name."""
    import optuna

    storage = open_storage(url, heartbeat=60)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise ConfigError(
            f"--study {name}: no such study in {shown(url)}"
            + (f" (it holds {', '.join(names)})" if names else " (it holds none)")
        ) from None
