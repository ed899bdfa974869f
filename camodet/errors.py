"""The errors users cause, and the exit codes they end a command with: every such error derives
from CamodetError and carries its code, so that the command line maps them with one isinstance.
Below everything else (no imports)."""

EXIT_USAGE = 2  # a value, a file or a machine that does not allow what was asked
EXIT_DIVERGED = 3  # training diverged beyond its rollbacks


class CamodetError(Exception):
    """An expected failure: the message is one line that names the thing and the fix."""

    exit_code = EXIT_USAGE


class ConfigError(CamodetError, ValueError):
    """A configuration value that makes no sense; the message is one line."""
