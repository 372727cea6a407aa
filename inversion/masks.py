"""Keeping the source outside a (feathered) edit mask: one blend shared by the edit loops."""

from __future__ import annotations

from typing import Optional

import torch


def keep_outside(mask: Optional[torch.Tensor], edited: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``kept + mask * (edited - kept)``: the edit inside the (feathered) mask, ``kept`` outside.

    ``mask`` broadcasts to the latent (``[B or 1, 1, H, W]``, 1 where the edit applies) or is None.
    """
    if mask is None:
        return edited
    return kept + mask.to(edited.dtype) * (edited - kept)
