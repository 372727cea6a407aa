"""A MASK input for the pack's guiders: ComfyUI's MASK to a feathered latent-size mask, or a clear error.

The rule (:mod:`..inversion.masks`): the mask is taken at the latent's size; a mask of another
size with the same aspect ratio (the usual case: a mask painted on the image, 8x the latent) is
resized with a note in the log; another aspect ratio, an empty or a full mask, or a batch of
masks that is neither one nor one per edited row is refused. White (1) is the region to edit.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from comfy_api.latest import io

from ..inversion.masks import DEFAULT_FEATHER, MaskError, latent_mask
from .errors import InvEditInputError

MAX_FEATHER = 64


KEPT_RECONSTRUCTION = "the result equals the reconstruction"


def mask_inputs(outside: str = KEPT_RECONSTRUCTION) -> list:
    """The optional MASK and its feather width, for the END of an edit node's inputs; ``outside``
    says what the node keeps outside the mask."""
    return [
        io.Mask.Input("mask", optional=True,
                      tooltip=f"Edit only inside this mask (white); outside it {outside}. "
                              "Painted on the image (resized to the latent, same aspect ratio) or at latent size. "
                              "One mask for every edit, or one per edit."),
        io.Int.Input("mask_feather", default=DEFAULT_FEATHER, min=0, max=MAX_FEATHER, optional=True,
                     tooltip="Width in latent pixels (8 image pixels each) of the soft ramp INSIDE the mask's edge; "
                             "outside the mask nothing changes. 0: a hard edge."),
    ]


def edit_mask(mask: Optional[torch.Tensor], latent_shape: torch.Size, rows: int, feather: int,
              what: str) -> Optional[torch.Tensor]:
    """``[1 or rows, 1, H, W]`` the feathered latent-size mask for ``rows`` edited rows (None: no mask).

    Raises:
        InvEditInputError: the mask is of another aspect ratio, empty, full, or its batch matches
            neither one mask nor ``rows``.
    """
    if mask is None:
        return None
    try:
        prepared, resized = latent_mask(mask.detach().cpu(), latent_shape[-2:], rows, feather)
    except MaskError as error:
        raise InvEditInputError(f"{what}: {error}") from None
    if resized:
        logging.info("%s: the %dx%d mask was resized to the latent's %dx%d.", what, mask.shape[-1],
                     mask.shape[-2], latent_shape[-1], latent_shape[-2])
    return prepared
