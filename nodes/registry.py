"""The pack's node list, as ComfyUI's V3 extension API asks for it."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import adapters, diversity, scheduled_adapter, training


class SDAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*adapters.NODES, *diversity.NODES, *scheduled_adapter.NODES, *training.NODES]
