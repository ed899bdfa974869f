"""Which process this is among several started by torchrun or srun (all ones when alone), and
the process group they share: training (engine/distributed.py builds DDP on it), sharded
prediction and sharded evaluation all read the launchers' variables here, and only here.

Prediction and evaluation also take their share of the inputs here (Shard): blocks of
consecutive inputs in their stable sorted order, dealt round-robin, so every input is in exactly
one share. With the block a batch, each process forms the batches one process would have formed,
so every image gets the same numbers; videos and frame sequences are dealt whole (block 1 over
clips). start() is their per-process setup: its own GPU (LOCAL_RANK), or its part of the CPU's
threads, and the watch (PeerWatch) that ends them all when one of them goes."""

import atexit
import contextlib
import datetime
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

from .errors import CamodetError
from .models.device import resolve_device


class ProcessFailure(CamodetError, RuntimeError):
    """A process this command runs beside or started (a metric worker, a data-loader worker,
    another process of the launch) died or failed; the message names it and what to do."""


# On the CPU the model's compute threads use every core; a loader worker takes its cycles from
# them. It pays only where preparing a batch costs more than 1/(cores - 1) of a step, which
# needs many cores; with few, the main process prepares batches between steps.
CPU_WORKERS_FROM_CORES = 8
GPU_MAX_WORKERS = 16


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as a container or taskset sets it),
    shared among the processes torchrun started on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_workers(setting: "int | str", device_type: str, cores: int | None = None) -> int:
    """--num-workers: a number as given; auto = on a GPU, the cores less one for the main process
    (up to 16); on the CPU, none below 8 cores (measured on 2: benchmarks/epoch_time.py), then
    one per 8 cores."""
    if setting != "auto":
        return int(setting)
    cores = usable_cores() if cores is None else cores
    if device_type == "cuda":
        return max(1, min(GPU_MAX_WORKERS, cores - 1))
    return cores // CPU_WORKERS_FROM_CORES


def exit_status(code: int | None) -> str:
    """How a child process ended, from its exit code (negative: the signal that ended it)."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Dist:
    """This process's place among the processes of a launch (all ones when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node
    launcher: str = "single"  # single | torchrun | srun
    # sharded predict and evaluate: the thread that watches the other processes (start())
    watch: "PeerWatch | None" = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def nodes(self) -> int:
        return max(1, self.world // max(1, self.local_world))

    def describe(self) -> str:
        return (
            f"launcher {self.launcher}: {self.world} process(es) on {self.nodes} node(s), "
            f"{self.local_world} per node"
        )


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu3' -> 'gpu07'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise RuntimeError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(3)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def tasks_per_node(text: str) -> int:
    """SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE: '2(x3)' or '2,1' -> the first count."""
    return int(re.match(r"\d+", text).group(0)) if text and re.match(r"\d+", text) else 1


def from_srun(env=os.environ) -> dict | None:
    """torchrun's variables from what srun sets for each task (None: not an srun launch of
    several tasks). MASTER_PORT, unless given, comes from the job id so that two jobs on a
    node do not collide."""
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return None
    nodelist = (
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    )
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(
            tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1"))
        ),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodelist or "localhost"),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
    }


def init(device_kind: str) -> Dist:
    """torchrun's environment (one or several nodes), else srun's, decides; a single process
    needs no process group."""
    launcher = "torchrun"
    if "WORLD_SIZE" not in os.environ:
        srun = from_srun()
        if srun is None:
            return Dist()
        os.environ.update(srun)
        launcher = "srun"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        launcher,
    )


def own_device(name: str, d: Dist) -> torch.device:
    """resolve_device, with each process of a node on its own GPU (LOCAL_RANK)."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    with _peers_watched(d):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank (the others pass anything, e.g. None)."""
    if not d.enabled:
        return obj
    box = [obj]
    with _peers_watched(d):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        with _peers_watched(d):
            dist.barrier()


def shutdown(d: Dist) -> None:
    if d.watch is not None:
        d.watch.close()
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _peers_watched(d: Dist):
    """A collective that fails because a process has gone: the watch, which sees the same broken
    connection, names the process and ends this one; the collective's own error is left to it."""
    try:
        yield
    except RuntimeError:
        if d.watch is not None:
            d.watch.thread.join(PEER_TIMEOUT.total_seconds() + 10)
        raise


# Sharded predict and evaluate watch each other: a process that dies (kill -9, the out-of-memory
# killer) or fails ends them all within seconds, in one line naming it, whatever they are doing.
# The simpler ways fall short: a short timeout on the process group would also end a healthy
# launch, whose collectives wait for the slowest process (a long video ends one process's share
# long after the others); torchrun's agent ends the processes of its own node when one dies, but
# srun starts them without an agent, and another node's agent knows nothing of it; gloo notices a
# process that has gone only at the next collective, maybe a whole share of the inputs later, and
# NCCL not before its own timeout. So a thread on each process, with a small gloo group of its
# own, tells process 0 every HEARTBEAT_S that it is there (and whether it is done), and process 0
# answers everyone; a process that has gone breaks its connection at once (one that hangs shows
# after PEER_TIMEOUT), process 0 names it and tells the others, and each ends with EXIT_PEER_LOST.
HEARTBEAT_S = 1.0
PEER_TIMEOUT = datetime.timedelta(seconds=60)
EXIT_PEER_LOST = 2  # the CLI's exit code for a failure the user acts on
WORKING, DONE = 0, 1  # what a process says of itself
GO, STOP = -1, -2  # process 0's answer to everyone; a rank (>= 0): that process has gone
ANSWER_TIMEOUT = datetime.timedelta(seconds=5)  # for the others to hear which one has gone


class PeerWatch:
    """The watch of one process of a sharded launch (see above). `close()` once the work is
    through (every process calls it): the watch ends when every process has. A process that
    exits otherwise (an error) lets its watch finish the round it is in first, as gloo aborts
    the process when it is torn down with a message still on its way."""

    def __init__(self, d: Dist, rerun: str):
        self.d, self.rerun = d, rerun
        self.group = dist.new_group(backend="gloo", timeout=PEER_TIMEOUT)
        self.done, self.leaving = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._watch, name="camodet-peers", daemon=True)
        self.thread.start()
        atexit.register(self._leave)

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        atexit.unregister(self._leave)
        dist.destroy_process_group(self.group)

    def _leave(self) -> None:
        self.leaving.set()
        self.thread.join(2 * PEER_TIMEOUT.total_seconds())

    def _watch(self) -> None:
        # Process 0 waits for the others' word all the time (so it sees a broken connection at
        # once); the others speak every HEARTBEAT_S, and as fast as they can once done.
        while not self.leaving.is_set() and self._round() != STOP:
            if not self.d.is_main and not self.done.is_set():
                self.leaving.wait(HEARTBEAT_S)

    def _round(self) -> int:
        return self._hear_everyone() if self.d.is_main else self._report()

    def _hear_everyone(self) -> int:
        """Process 0: every other process's word, then the answer to each of them."""
        others = range(1, self.d.world)
        words = {r: torch.zeros(1, dtype=torch.int64) for r in others}
        gone = [r for r in others if not self._exchange(dist.irecv, words[r], r)]
        done = self.done.is_set() and all(int(words[r]) == DONE for r in others)
        answer = gone[0] if gone else STOP if done else GO
        if gone:  # said first: torchrun's agent may end this process as soon as it sees one gone
            self._say(f"process {gone[0]} of {self.d.world} of this launch stopped before the end")
        for r in others:
            if r not in gone:
                self._exchange(
                    dist.isend, torch.tensor([answer]), r, ANSWER_TIMEOUT if gone else PEER_TIMEOUT
                )
        if gone:
            os._exit(EXIT_PEER_LOST)
        return answer

    def _report(self) -> int:
        """Any other process: its word to process 0, and process 0's answer (an answer naming
        another process: process 0 has said so, and this one just ends)."""
        word = torch.tensor([DONE if self.done.is_set() else WORKING])
        answer = torch.zeros(1, dtype=torch.int64)
        # longer than process 0 waits for a silent process: its answer naming that one comes first
        if not (
            self._exchange(dist.isend, word, 0) and self._exchange(dist.irecv, answer, 0, 2 * PEER_TIMEOUT)
        ):
            self._say(f"process 0 of {self.d.world} of this launch stopped before the end")
            os._exit(EXIT_PEER_LOST)
        if int(answer) >= 0:
            os._exit(EXIT_PEER_LOST)
        return int(answer)

    def _exchange(
        self, op, tensor: torch.Tensor, peer: int, timeout: datetime.timedelta = PEER_TIMEOUT
    ) -> bool:
        """Send or receive one number; False when the peer has gone (a broken connection) or is silent."""
        try:
            return bool(op(tensor, peer, group=self.group).wait(timeout))
        except RuntimeError:
            return False

    def _say(self, what: str) -> None:
        sys.stderr.write(
            f"camodet: error: {what} (it failed, as its own message says, or was killed); ending "
            f"this one too. {self.rerun}\n"
        )
        sys.stderr.flush()


@dataclass(frozen=True)
class Shard:
    """This process's share: blocks rank, rank + world, ... of the inputs (all of them alone)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, d: Dist) -> "Shard":
        return cls(d.rank, d.world)

    def indices(self, count: int, block: int = 1) -> list[int]:
        """Positions of this share's inputs among `count`, in order."""
        block = max(1, block)
        return [i for i in range(count) if (i // block) % self.world == self.rank]


def start(device: str, rerun: str = "") -> tuple[Dist, torch.device]:
    """Join the launch (a process group when there are several processes: gloo on the CPU)
    and pick this process's device; on the CPU the processes of a node split its cores, as
    `torch` would otherwise give each of them all of them and they would fight over them.
    Several processes watch each other (PeerWatch; shutdown() ends the watch); `rerun`: what
    its one line says the user can do after one of them went."""
    d = init("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    own = own_device(device, d)
    if d.enabled and own.type == "cpu":
        threads = max(1, (os.cpu_count() or 1) // d.local_world)
        torch.set_num_threads(threads)
        # OpenCV's pool as well: it resizes and decodes the maps that evaluate scores
        import cv2

        cv2.setNumThreads(threads)
    if d.enabled:
        d = replace(d, watch=PeerWatch(d, rerun))
    return d, own
