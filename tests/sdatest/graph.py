"""API-format prompts built in code: what the frontend sends to the server's /prompt."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Node:
    id: str

    def __getitem__(self, index: int) -> list:
        """The link to output `index` of this node."""
        return [self.id, index]


class Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, **inputs: Any) -> Node:
        node = Node(str(len(self.nodes) + 1))
        wired = {k: (v[0] if isinstance(v, Node) else v) for k, v in inputs.items()}
        self.nodes[node.id] = {"class_type": class_type, "inputs": wired}
        return node

    def prompt(self) -> dict[str, dict[str, Any]]:
        return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in self.nodes.items()}
