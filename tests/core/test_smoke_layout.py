"""The pack's layout promises: sda_core never imports comfy."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sda_core_never_imports_comfy():
    offenders = []
    for path in (ROOT / "sda_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "execution", "server"}:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
