"""House rules the linter cannot check: every public class, and every public function or
method longer than about 15 lines, says in a docstring what it is for."""

import ast
import pathlib

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


def test_shipping_a_model_does_not_load_the_training_engine():
    import subprocess
    import sys

    code = (
        "import sys, camodet.serving.predictor, camodet.serving.export, camodet.serving.hub, "
        "camodet.serving.predict, camodet.serving.video, camodet.serving.app, camodet.evaluation.protocol, "
        "camodet.evaluation.report, camodet.runs.inspection, camodet.runs.resume; "
        "print(sorted(m for m in sys.modules if m.startswith('camodet.engine')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    ).stdout.strip()
    assert out == "[]"

