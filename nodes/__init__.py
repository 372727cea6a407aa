"""ComfyUI V3 adapters of InvEdit: the only package that imports ComfyUI."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .ddpm_nodes import NODES as DDPM_NODES
from .diagnostics_nodes import NODES as DIAGNOSTICS_NODES
from .flowedit_nodes import NODES as FLOWEDIT_NODES
from .inversion_nodes import NODES as INVERSION_NODES
from .p2p_nodes import NODES as P2P_NODES
from .sampling_nodes import NODES as SAMPLING_NODES
from .storage_nodes import NODES as STORAGE_NODES
from .testbed_nodes import NODES as TESTBED_NODES
from .unconditioning_nodes import NODES as UNCONDITIONING_NODES


class InvEditExtension(ComfyExtension):
    """Lists every InvEdit node for ComfyUI."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*INVERSION_NODES, *UNCONDITIONING_NODES, *SAMPLING_NODES, *STORAGE_NODES, *P2P_NODES, *TESTBED_NODES,
                *DIAGNOSTICS_NODES, *FLOWEDIT_NODES, *DDPM_NODES]
