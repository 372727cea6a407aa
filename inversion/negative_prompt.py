"""Negative-prompt inversion: the source prompt stands in for the unconditional one.

Miyake et al., "Negative-prompt Inversion: Fast Image Inversion for Editing with Text-guided
Diffusion Models" (arXiv 2305.16807): after a guidance-1 DDIM inversion with the source
prompt ``c``, sampling with guidance ``w`` stays on the inverted trajectory when the
unconditional branch also sees ``c`` (then ``eps_u = eps_c`` and guidance changes nothing
for the source prompt). No optimisation; edits push away from the source prompt instead of
from the empty one. Blending a little of the empty prompt back in trades fidelity for edit
strength.
"""

from __future__ import annotations

import torch


def blend_with_empty(source: torch.Tensor, empty: torch.Tensor, empty_weight: float) -> torch.Tensor:
    """``(1 - w) * source + w * empty`` for text contexts ``[B, L, D]`` or pooled outputs ``[B, P]``.

    ``empty_weight`` 0 is pure negative-prompt inversion; 1 is exactly the empty prompt.
    """
    if not 0.0 <= empty_weight <= 1.0:
        raise ValueError(f"empty_weight must be in [0, 1], got {empty_weight}.")
    if empty_weight == 0.0:
        return source
    if source.shape[1:] != empty.shape[1:]:
        raise ValueError(
            f"The source prompt's tensor {list(source.shape)} and the empty prompt's {list(empty.shape)} differ in "
            "shape: blending needs prompts of the same token length (set the blend to 0, or shorten the prompt to "
            "one 77-token chunk)."
        )
    return torch.lerp(source, empty.to(source.device, source.dtype), empty_weight)
