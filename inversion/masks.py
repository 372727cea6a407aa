"""Masked edits: a feathered latent-size mask, and the blend that keeps everything outside it.

The edit a user asks for most: change the image inside a mask, nothing outside it. After every
sampling step an edited row is put back on a reference state outside the mask,

    ``x_edit <- x_ref + m * (x_edit - x_ref)``

with ``x_ref`` the source's state after the same step (the source row of a Prompt-to-Prompt
batch, or the INVERSION's recorded trajectory). Where ``m`` is 0 the result is ``x_ref`` bit for
bit, so the latent outside the mask equals the reference's at every step (the way LocalBlend,
Hertz et al. 2023 Sec. 3.2, and Blended Latent Diffusion, Avrahami et al. 2023, blend).

The mask acts on the latent itself (``[B, C, H, W]``; a flow transformer's 2x2 patches are
made inside the model). The feather is a ramp INSIDE the mask: ``feather`` latent pixels wide,
from ``1 / (feather + 1)`` at the mask's edge to 1, so the region outside the given mask stays
exact and the seam inside it is soft.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_FEATHER = 1
"""Latent pixels of the ramp inside the mask's edge (0: a hard edge)."""
MASK_ON_THRESHOLD = 0.0
"""A latent pixel is inside the mask when its value is above this."""
MAX_ASPECT_MISMATCH = 0.05
"""A mask is resized to the latent when their aspect ratios differ by at most 5 %; else refused."""

_ERODE_WINDOW = 3  # one latent pixel of erosion per pass (a 3x3 min-pool)


class MaskError(ValueError):
    """A mask that cannot be used: wrong size, empty, full, or a batch that does not match."""


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` float from a mask given as ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise MaskError(f"A mask is [H, W], [B, H, W] or [B, 1, H, W]; got shape {tuple(mask.shape)}.")
    return mask.float()


def resized_to_latent(mask: torch.Tensor, latent_hw: Sequence[int]) -> tuple[torch.Tensor, bool]:
    """``([B, 1, h, w], resized)``: the mask at the latent's size ``(h, w)``.

    A mask of another size with the latent's aspect ratio (within :data:`MAX_ASPECT_MISMATCH`),
    e.g. the image-size mask of an 8x smaller latent, is area-averaged down (or bilinearly up) to
    it; ``resized`` says so. Another aspect ratio is refused: it is a mask of another image.
    """
    mask = as_mask_batch(mask)
    height, width = (int(side) for side in latent_hw)
    if tuple(mask.shape[-2:]) == (height, width):
        return mask, False
    ratio = (mask.shape[-1] / mask.shape[-2]) / (width / height)
    if abs(ratio - 1.0) > MAX_ASPECT_MISMATCH:
        raise MaskError(
            f"The mask is {mask.shape[-1]}x{mask.shape[-2]} (width x height) but the image is {width}x{height} in "
            f"latent pixels: its aspect ratio differs. Make the mask from the edited image (same size).")
    shrinking = mask.shape[-2] >= height and mask.shape[-1] >= width
    mode = "area" if shrinking else "bilinear"
    resized = F.interpolate(mask, size=(height, width), mode=mode,
                            **({} if shrinking else {"align_corners": False}))
    return resized.clamp(0.0, 1.0), True


def eroded(mask: torch.Tensor) -> torch.Tensor:
    """The mask shrunk by one latent pixel (3x3 min-pool; the image border is not an edge)."""
    pad = _ERODE_WINDOW // 2
    padded = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
    return -F.max_pool2d(-padded, _ERODE_WINDOW, stride=1)


def feathered(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """``[B, 1, H, W]``: the mask with a ``feather``-pixel ramp inside its edge (zero stays zero).

    The mean of the mask and its ``feather`` successive erosions: 1 deeper than ``feather``
    pixels inside, ``(k + 1) / (feather + 1)`` at ``k`` pixels inside the edge, 0 outside.
    """
    if feather < 0:
        raise MaskError(f"feather is a width in latent pixels (0 or more); got {feather}.")
    layers = [mask]
    for _ in range(feather):
        layers.append(eroded(layers[-1]))
    return torch.stack(layers).mean(0)


def check_mask_coverage(mask: torch.Tensor) -> None:
    """Refuse a mask (``[B, 1, H, W]`` at latent size) that is empty or full in any row."""
    inside = mask > MASK_ON_THRESHOLD
    per_row = inside.flatten(1)
    for row, covered in enumerate(per_row):
        if not bool(covered.any()):
            raise MaskError(f"Mask {row} is empty at the latent's size: the edit could change nothing. Paint the "
                            "region to edit (white), or disconnect the mask.")
        if bool(covered.all()) and bool((mask[row] >= 1.0).all()):
            raise MaskError(f"Mask {row} covers the whole image: it keeps nothing. Disconnect the mask to edit the "
                            "whole image, or paint only the region to edit.")


def matched_rows(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """The ``[B, 1, H, W]`` mask for ``rows`` edited rows: one mask for all, or one per row."""
    if mask.shape[0] == rows:
        return mask
    if mask.shape[0] == 1:
        return mask.expand(rows, *mask.shape[1:])
    raise MaskError(f"{mask.shape[0]} masks for {rows} edited row(s): give one mask for all of them, or one per "
                    "edited row, in order.")


def latent_mask(mask: torch.Tensor, latent_hw: Sequence[int], rows: int,
                feather: int = DEFAULT_FEATHER) -> tuple[torch.Tensor, bool]:
    """``([rows, 1, h, w], resized)``: a user's mask ready for :func:`keep_outside`.

    Resized to the latent (:func:`resized_to_latent`), checked (not empty, not full), feathered
    inside its edge and matched to the edited rows.
    """
    at_latent, resized = resized_to_latent(mask, latent_hw)
    check_mask_coverage(at_latent)
    return matched_rows(feathered(at_latent, feather), rows), resized


def keep_outside(x_reference: torch.Tensor, x_edit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x_ref + m * (x_edit - x_ref)``: the edit inside the mask, the reference outside (bit for bit).

    Args:
        x_reference: ``[R, C, H, W]`` (or ``[1, ...]``, broadcast) the state to keep; video-shaped
            latents ``[R, C, T, H, W]`` (Qwen-Image) take the same mask on every frame.
        x_edit: ``[R, C, H, W]`` the edited rows' state.
        mask: ``[R or 1, 1, H, W]`` from :func:`latent_mask`.
    """
    frames = [1] * (x_edit.dim() - mask.dim())
    mask = mask.reshape(mask.shape[0], 1, *frames, *mask.shape[-2:])
    return x_reference + mask.to(x_edit) * (x_edit - x_reference)
