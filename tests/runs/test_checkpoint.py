import os
import stat

import torch

from camodet.runs.checkpoint import atomic_save


def test_checkpoints_get_the_folders_usual_mode_not_a_temp_files(tmp_path):
    """A team's shared run folder: a checkpoint is as readable as any other file written there."""
    old = os.umask(0o022)
    try:
        atomic_save({"epoch": 1, "w": torch.zeros(2)}, str(tmp_path / "last.pth"))
        open(tmp_path / "other.txt", "w").close()
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "last.pth").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "other.txt").st_mode) == 0o644
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1
