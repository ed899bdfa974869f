"""Divergence guard: decides, from one host read per optimizer step, whether the
step is taken, skipped (a non-finite step, a one-window loss spike), or whether the
run must roll back. Pure host logic, so
it is unit-tested on made-up numbers."""

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from ..errors import EXIT_DIVERGED, CamodetError


class DivergenceError(CamodetError, RuntimeError):
    """Training diverged more often than --max-rollbacks allows; the message says what to change."""

    exit_code = EXIT_DIVERGED


STEP, OVERFLOW, SKIP, ROLLBACK = "step", "overflow", "skip", "rollback"

WINDOW = 100  # optimizer steps over which non-finite steps are counted
MIN_HISTORY = 20  # finite losses needed before a spike can be judged


@dataclass
class Verdict:
    """What to do with an optimizer step (STEP, SKIP, OVERFLOW, ROLLBACK) and why."""

    action: str
    reason: str = ""


@dataclass
class DivergenceGuard:
    """Judges every optimizer step from its loss, gradient norm and weight norm:
    non-finite numbers and loss spikes are skipped once, then rolled back; see observe()."""

    max_nonfinite_steps: int = 3
    spike_factor: float = 10.0
    losses: deque = field(default_factory=lambda: deque(maxlen=200))
    recent_nonfinite: deque = field(default_factory=deque)  # step counters of non-finite steps
    counts: dict = field(default_factory=lambda: {"overflow": 0, "nonfinite": 0})
    spike_streak: int = 0  # consecutive windows judged a loss spike

    def observe(self, step: int, loss: float, grad_norm: float, weight_norm: float, fp16: bool) -> Verdict:
        """`step` is a running optimizer-step counter; the norms are over the trainable parameters."""
        if not math.isfinite(weight_norm):
            return Verdict(ROLLBACK, "non-finite weights")
        if math.isfinite(loss) and not math.isfinite(grad_norm) and fp16:
            # GradScaler skips this step and lowers its scale: normal fp16 behaviour.
            self.counts["overflow"] += 1
            return Verdict(OVERFLOW, "fp16 gradient overflow (skipped by the grad scaler)")
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.counts["nonfinite"] += 1
            self.recent_nonfinite.append(step)
            while self.recent_nonfinite and self.recent_nonfinite[0] <= step - WINDOW:
                self.recent_nonfinite.popleft()
            what = f"loss {loss:.4g}, gradient norm {grad_norm:.4g}"
            if len(self.recent_nonfinite) >= self.max_nonfinite_steps:
                return Verdict(
                    ROLLBACK,
                    f"{len(self.recent_nonfinite)} non-finite steps within {WINDOW} optimizer steps ({what})",
                )
            return Verdict(SKIP, f"non-finite step skipped ({what})")
        if self.spike_factor > 0 and len(self.losses) >= MIN_HISTORY:
            median = statistics.median(self.losses)
            if loss > self.spike_factor * median:
                # One bad batch (a mislabelled mask) spikes once: skip it. A rollback replays the
                # same data, so it would only meet the same batch again; it is kept for a spike
                # that persists into the next window, which the data alone does not explain.
                self.spike_streak += 1
                what = f"loss spike: {loss:.4g} is {loss / median:.1f}x the running median {median:.4g}"
                if self.spike_streak > 1:
                    return Verdict(ROLLBACK, f"{what}, again in the window after a skipped spike")
                return Verdict(SKIP, f"{what}; window skipped")
        self.spike_streak = 0
        self.losses.append(loss)
        return Verdict(STEP)

    def after_rollback(self) -> None:
        self.recent_nonfinite.clear()
        self.spike_streak = 0

    def state_dict(self) -> dict:
        return {
            "losses": list(self.losses),
            "recent_nonfinite": list(self.recent_nonfinite),
            "spike_streak": self.spike_streak,
        }

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state.get("losses", []))
        self.recent_nonfinite.extend(state.get("recent_nonfinite", []))
        self.spike_streak = int(state.get("spike_streak", 0))
