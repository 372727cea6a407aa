"""A MASK (image pixels) as a feathered latent mask for the edit samplers.

Small and self-contained on purpose: the masked-edit work (issue 15) brings the pack's shared mask
handling; this module is the one place the edit samplers of issue 16 read a MASK, so swapping it
for the shared one changes one import.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from comfy_api.latest import io

from .errors import InvEditInputError

MAX_FEATHER = 64
MASK_DIMS = (2, 3)
"""A ComfyUI MASK is ``[H, W]`` or ``[B, H, W]``."""


def feathered_latent_mask(mask: Optional[torch.Tensor], latent_shape: torch.Size, feather: int) -> Optional[torch.Tensor]:
    """``[B or 1, 1, h, w]`` mask at the latent's size, softened over ``feather`` latent pixels.

    Args:
        mask: ComfyUI MASK ``[B, H, W]`` (or ``[H, W]``), 1 where the edit applies; None for no mask.
        latent_shape: ``[B, C, h, w]`` of the latent being edited.
        feather: box-blur radius in latent pixels (0: the area-resampled mask as it is).
    """
    if mask is None:
        return None
    if mask.ndim not in MASK_DIMS:
        raise InvEditInputError(f"The mask must be a MASK [batch, height, width]; got shape {tuple(mask.shape)}.")
    batch, height, width = latent_shape[0], latent_shape[-2], latent_shape[-1]
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    if mask.shape[0] not in (1, batch):
        raise InvEditInputError(f"The mask has {mask.shape[0]} images for a latent of {batch}: give one mask or one per image.")
    small = F.interpolate(mask, size=(height, width), mode="area")
    if feather > 0:
        size = 2 * feather + 1
        small = F.avg_pool2d(F.pad(small, (feather,) * 4, mode="replicate"), size, stride=1)
    return small.clamp(0.0, 1.0)


def mask_inputs(outside: str) -> list:
    """The optional ``mask`` and ``mask_feather`` inputs of an edit node; ``outside`` says what is kept there."""
    return [
        io.Mask.Input("mask", optional=True, tooltip=f"Where to edit (white); outside it {outside}."),
        io.Int.Input("mask_feather", default=1, min=0, max=MAX_FEATHER, optional=True,
                     tooltip="Softens the mask edge over this many latent pixels."),
    ]
