"""comfyui-sda: seed diversity for few-step distilled flow models. Registration only.

ComfyUI's V3 entry point; the node list lives in nodes/registry.py. Importing this file needs no ComfyUI
(ComfyUI is imported when the entry point is called), so tools and test runners can import the package.
"""


async def comfy_entrypoint():
    from .nodes.registry import SDAExtension

    return SDAExtension()
