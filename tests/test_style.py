"""House rules the linter cannot check: every public class, and every public function or
method longer than about 15 lines, says in a docstring what it is for."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "camodet"
LONG = 15  # lines


def undocumented(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    missing = []

    def visit(node, scope: str, public_scope: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                public = public_scope and not child.name.startswith("_")
                lines = child.end_lineno - child.lineno + 1
                needs = isinstance(child, ast.ClassDef) or lines > LONG
                if public and needs and ast.get_docstring(child) is None:
                    missing.append(
                        f"{path.relative_to(PACKAGE.parent)}:{child.lineno} {scope}{child.name} "
                        f"({lines} lines)"
                    )
                # functions nested in functions are details of their parent
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{scope}{child.name}.", public)

    visit(tree, "", True)
    return missing


def test_public_classes_and_long_functions_have_docstrings():
    missing = [m for p in sorted(PACKAGE.rglob("*.py")) for m in undocumented(p)]
    assert not missing, "add a docstring to:\n" + "\n".join(missing)


def fresh_python(code: str) -> str:
    """What `code` prints in a new interpreter (nothing imported yet), stripped."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    ).stdout.strip()


def test_shipping_a_model_does_not_load_the_training_engine():
    code = (
        "import sys, camodet.serving.predictor, camodet.serving.export, camodet.serving.hub, "
        "camodet.serving.predict, camodet.serving.video, camodet.serving.app, camodet.evaluation.protocol, "
        "camodet.evaluation.report, camodet.runs.inspection, camodet.runs.resume; "
        "print(sorted(m for m in sys.modules if m.startswith('camodet.engine')))"
    )
    out = fresh_python(code)
    assert out == "[]"


def test_scoring_saved_maps_does_not_import_timm():
    """evaluate --preds-dir and its --workers processes build no model: timm's seconds of import
    were most of each process's fixed cost (benchmarks/eval_scaling.py)."""
    code = (
        "import sys, camodet.cli, camodet.evaluation.protocol, camodet.launch; "
        "from camodet.models.device import resolve_device; print('timm' in sys.modules)"
    )
    out = fresh_python(code)
    assert out == "False"


def test_building_a_model_does_not_import_wandb_and_the_tracker_still_can():
    """timm imports wandb when it is installed (~0.7 s of every training process's start);
    camodet.models.timm_lib keeps it out, and `--tracker wandb` can still import it after."""
    pytest.importorskip("wandb", reason="needs wandb installed to show it is not imported")
    code = (
        "import sys, camodet.engine.trainer; from camodet.models import build_model; "
        "from camodet.config import ModelConfig; "
        "build_model(ModelConfig(backbone='edgenext_xx_small', num_experts=1, pretrained=False)); "
        "print('wandb' in sys.modules); import wandb; print(callable(wandb.init))"
    )
    out = fresh_python(code).split()
    assert out == ["False", "True"]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """camodet module -> the camodet modules it imports, read from the source: every import
    statement, at the top or inside a function (a lazy import is still a dependency),
    relative or absolute; `from pkg import name` counts as pkg.name when that is a module."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                found = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in paths:  # camodet.x.y.Name -> camodet.x.y
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_no_import_circles_between_camodet_modules():
    graph = import_graph()
    assert "camodet.serving.predictor" in graph["camodet.serving.export"]  # the reader sees imports
    assert "camodet.serving.fetch" in graph["camodet.serving.predictor"]  # lazy ones too
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


# The packages from the bottom up (DESIGN.md's import direction): a module imports only from its
# own package and those below it. Evaluation sits below serving (serving publishes and draws with
# its metrics), tracking above serving (it exports the finished run), the engine above tracking.
LAYERS = (
    "errors",
    "fields",
    "config",
    "options",
    "data",
    "models",
    "runs",
    "launch",
    "evaluation",
    "serving",
    "tracking",
    "engine",
    "tune",
    "cli",
)


def layer(module: str) -> int | None:
    part = module.split(".")[1] if module.count(".") else None
    return LAYERS.index(part) if part in LAYERS else None


def test_every_import_points_down_the_layers():
    upward = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    ]
    assert not upward, "imports against the layers " + " < ".join(LAYERS) + ": " + ", ".join(sorted(upward))


def test_the_circle_check_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


ENGINE_LONGEST = 60  # lines


def test_engine_functions_fit_on_a_screen():
    long = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > ENGINE_LONGEST:
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    long.append(f"{where} {node.name} ({lines} lines)")
    assert not long, f"split these (engine functions stay within {ENGINE_LONGEST} lines):\n" + "\n".join(long)
