"""The pack's node list, as ComfyUI's V3 extension API asks for it."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import adapters, conditioning_methods, diversity, model_by_step, scheduled_adapter, training


class SDAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*adapters.NODES, *diversity.NODES, *scheduled_adapter.NODES, *training.NODES,
                *conditioning_methods.NODES, *model_by_step.NODES]
