"""Small images the nodes show while they work (progress-bar previews)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

PLOT_WIDTH, PLOT_HEIGHT = 320, 160
PLOT_MARGIN = 8
PREVIEW_FORMAT = "JPEG"
PREVIEW_MAX_SIZE = 512
LOSS_FLOOR = 1e-12  # losses are drawn on a log scale; zero is drawn at this value
BACKGROUND, AXIS, LOSS_COLOUR, BOUND_COLOUR, TEXT_COLOUR = "#1e1e1e", "#555555", "#4fc3f7", "#ffb74d", "#dddddd"


def _log(value: float) -> float:
    return math.log10(max(value, LOSS_FLOOR))


def loss_plot(losses: list[float], bounds: list[float], total_steps: int, caption: Optional[str] = None) -> Image.Image:
    """A log-scale plot of one loss per step (blue) against its early-stop bound (orange).

    ``losses[i]`` and ``bounds[i]`` belong to step ``i``; ``total_steps`` fixes the x axis.
    """
    image = Image.new("RGB", (PLOT_WIDTH, PLOT_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    values = [_log(v) for v in losses + bounds if math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (-6.0, 0.0)
    if high - low < 1.0:
        low, high = low - 0.5, high + 0.5
    left, top = PLOT_MARGIN, PLOT_MARGIN + 12
    right, bottom = PLOT_WIDTH - PLOT_MARGIN, PLOT_HEIGHT - PLOT_MARGIN
    span_x = max(total_steps - 1, 1)

    def point(step: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * step / span_x
        y = bottom - (bottom - top) * (_log(value) - low) / (high - low)
        return x, y

    draw.rectangle([left, top, right, bottom], outline=AXIS)
    for series, colour in ((bounds, BOUND_COLOUR), (losses, LOSS_COLOUR)):
        points = [point(step, v) for step, v in enumerate(series) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    label = caption or f"loss per step (log10 {low:.1f} .. {high:.1f})"
    draw.text((left, 2), label, fill=TEXT_COLOUR)
    return image


def progress_preview(image: Image.Image) -> tuple[str, Image.Image, int]:
    """The preview tuple ComfyUI's ProgressBar sends to the browser."""
    return PREVIEW_FORMAT, image, PREVIEW_MAX_SIZE


def image_from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as ``[H, W, 3]`` float32 in [0, 1] (``[None]`` makes it a ComfyUI IMAGE)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
