"""The pack's node ids read from its source (nodes/registry.py -> <module>.NODES -> node_id=...), without
ComfyUI: the always-tier knows which node types are ours, and the integration tier checks ComfyUI saw them all."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def registered_node_ids() -> set[str]:
    """Node ids our registry hands to ComfyUI, read from the source (nodes/registry.py -> <module>.NODES)."""
    registry = ast.parse((REPO / "nodes" / "registry.py").read_text())
    modules = {n.value.id for n in ast.walk(registry)
               if isinstance(n, ast.Attribute) and n.attr == "NODES" and isinstance(n.value, ast.Name)}
    assert modules, "nodes/registry.py lists no <module>.NODES"
    ids = set()
    for module in modules:  # a module nodes/<module>.py or a package nodes/<module>/ (its NODES in any file)
        single = REPO / "nodes" / f"{module}.py"
        files = [single] if single.exists() else sorted((REPO / "nodes" / module).glob("*.py"))
        trees = [ast.parse(f.read_text()) for f in files]
        listed = {e.id for tree in trees for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "NODES" for t in n.targets) and isinstance(n.value, ast.List)
            for e in n.value.elts}
        for cls in (c for tree in trees for c in tree.body):
            if isinstance(cls, ast.ClassDef) and cls.name in listed:
                ids |= {kw.value.value for call in ast.walk(cls) if isinstance(call, ast.Call)
                        for kw in call.keywords if kw.arg == "node_id" and isinstance(kw.value, ast.Constant)}
    return ids
