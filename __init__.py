"""InvEdit: faithful inversion and editing of real images for ComfyUI.

Importing this package does no work: the node classes (and ComfyUI's API) are
imported only when ComfyUI calls :func:`comfy_entrypoint`.
"""

# Help pages ComfyUI shows for each node: web/docs/<node id>.md.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Return the V3 extension that lists InvEdit's nodes (called by ComfyUI)."""
    from .nodes import InvEditExtension

    return InvEditExtension()
