"""The error every run-folder and checkpoint problem raises."""

from ..errors import CamodetError


class CheckpointError(CamodetError, ValueError):
    """A checkpoint cannot be read or does not fit; the message says what to do.
    `kind`: missing, unsafe (needs pickled code), corrupt, foreign (not ours), arch, write, exists."""

    def __init__(self, message: str, kind: str = "other"):
        super().__init__(message)
        self.kind = kind
