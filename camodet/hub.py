"""The old path of the Hub code, now camodet.serving.fetch (resolve, below the Predictor) and
camodet.serving.hub (push, above export); kept so that `from camodet.hub import ...` keeps working."""

from .serving.fetch import *  # noqa: F403
from .serving.hub import *  # noqa: F403
