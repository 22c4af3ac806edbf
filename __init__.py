"""comfyui-sda: seed diversity for few-step distilled flow models. Registration only.

ComfyUI's V3 entry point; the node list lives in nodes/registry.py. Importing this file needs no ComfyUI
(ComfyUI is imported when the entry point is called), so tools and test runners can import the package.
"""

# Frontend extension (web/sda_report.js: node reports shown on the node). ComfyUI reads WEB_DIRECTORY before
# it looks for comfy_entrypoint, so it applies to V3 packs too.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.registry import SDAExtension

    return SDAExtension()
