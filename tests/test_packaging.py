"""The dependency floors in pyproject.toml are what the code needs."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# API the package calls -> the first torch release that has it.
TORCH_APIS = {
    "torch.nn.utils.get_total_norm": (2, 6),
    "external_data=": (2, 6),  # torch.onnx.export(..., external_data=False)
    "torch.export.Dim": (2, 2),
    "torch.amp.GradScaler": (2, 3),
}


def _floor(package: str) -> tuple[int, ...]:
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    m = re.search(rf'"{package}>=([0-9.]+)"', text)
    assert m, f"pyproject.toml declares no floor for {package}"
    return tuple(int(p) for p in m.group(1).split("."))


def test_torch_floor_covers_the_api_in_use():
    source = ""
    for folder, _, files in os.walk(os.path.join(ROOT, "camodet")):
        source += "".join(open(os.path.join(folder, f)).read() for f in files if f.endswith(".py"))
    used = {api: v for api, v in TORCH_APIS.items() if api in source}
    assert "torch.nn.utils.get_total_norm" in used  # the table tracks the code
    need = max(used.values())
    assert _floor("torch")[:2] >= need, (
        f"torch>={'.'.join(map(str, _floor('torch')))} but the code needs {need}"
    )
