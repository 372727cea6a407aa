"""Small images the nodes show while they work (progress-bar previews) and plots they output."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PLOT_WIDTH, PLOT_HEIGHT = 512, 256  # ComfyUI sends previews of at most PREVIEW_MAX_SIZE on a side
PLOT_MARGIN_LEFT, PLOT_MARGIN_RIGHT = 52, 12  # the left margin holds the decade labels
PLOT_MARGIN_TOP, PLOT_MARGIN_BOTTOM = 46, 26  # caption and legend above, step labels below
PLOT_FONT_SIZE = 13
LEGEND_LINE_LENGTH = 22
PREVIEW_FORMAT = "JPEG"
PREVIEW_MAX_SIZE = 512
LOSS_FLOOR = 1e-12  # losses are drawn on a log scale; zero is drawn at this value
MIN_DECADES = 1  # the y axis spans at least one power of ten
BACKGROUND, AXIS, GRID, TEXT_COLOUR = "#1e1e1e", "#777777", "#333333", "#dddddd"
LOSS_COLOUR, BOUND_COLOUR = "#4fc3f7", "#ffb74d"
LOSS_LABEL, BOUND_LABEL = "loss at the end of the step", "early-stop bound"


def _font(size: int = PLOT_FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's own font at ``size`` (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _log(value: float) -> float:
    return math.log10(max(value, LOSS_FLOOR))


def _decade_range(values: list[float]) -> tuple[int, int]:
    """The powers of ten below and above every value (at least MIN_DECADES apart)."""
    logs = [_log(v) for v in values if math.isfinite(v)]
    if not logs:
        return -6, 0
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    if high - low < MIN_DECADES:
        high = low + MIN_DECADES
    return low, high


def _decade_label(exponent: int) -> str:
    return "1" if exponent == 0 else f"1e{exponent}"


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.ImageFont,
          align_x: float = 0.0, align_y: float = 0.0) -> None:
    """``text`` placed so that the point ``xy`` is at (align_x, align_y) of its box (0 left/top,
    0.5 centre, 1 right/bottom); no text anchors, which Pillow's bitmap font lacks."""
    width = draw.textlength(text, font=font)
    draw.text((xy[0] - align_x * width, xy[1] - align_y * PLOT_FONT_SIZE), text, fill=TEXT_COLOUR, font=font)


def loss_plot(losses: list[float], bounds: list[float], total_steps: int, caption: Optional[str] = None) -> Image.Image:
    """Loss per sampling step (blue) against its early-stop bound (orange), log-scale y axis.

    ``losses[i]`` and ``bounds[i]`` belong to step ``i``; ``total_steps`` fixes the x axis (steps
    1..total_steps). The y axis runs over whole decades with a labelled grid line at each; a legend
    names both curves; ``caption`` (default "null-text loss per step") heads the plot.
    Returns an RGB image of PLOT_WIDTH x PLOT_HEIGHT.
    """
    image = Image.new("RGB", (PLOT_WIDTH, PLOT_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    low, high = _decade_range(losses + bounds)
    left, top = PLOT_MARGIN_LEFT, PLOT_MARGIN_TOP
    right, bottom = PLOT_WIDTH - PLOT_MARGIN_RIGHT, PLOT_HEIGHT - PLOT_MARGIN_BOTTOM
    span_x = max(total_steps - 1, 1)

    def point(step: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * step / span_x
        y = bottom - (bottom - top) * (_log(value) - low) / (high - low)
        return x, y

    for exponent in range(low, high + 1):
        y = point(0, 10.0 ** exponent)[1]
        draw.line([(left, y), (right, y)], fill=GRID)
        _text(draw, (left - 6, y), _decade_label(exponent), font, align_x=1.0, align_y=0.5)
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    for step in sorted({0, span_x // 2, span_x}):
        x = point(step, 1.0)[0]
        _text(draw, (x, bottom + 4), str(step + 1), font, align_x=0.5)
    _text(draw, (left - 6, bottom + 4), "step", font, align_x=1.0)
    for series, colour in ((bounds, BOUND_COLOUR), (losses, LOSS_COLOUR)):
        points = [point(step, v) for step, v in enumerate(series) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    _text(draw, (4, 4), caption or "null-text loss per step (log scale)", font)
    x = 4
    legend_y = 4 + PLOT_FONT_SIZE + 8
    for label, colour in ((LOSS_LABEL, LOSS_COLOUR), (BOUND_LABEL, BOUND_COLOUR)):
        draw.line([(x, legend_y + PLOT_FONT_SIZE // 2), (x + LEGEND_LINE_LENGTH, legend_y + PLOT_FONT_SIZE // 2)],
                  fill=colour, width=3)
        x += LEGEND_LINE_LENGTH + 6
        _text(draw, (x, legend_y), label, font)
        x += int(draw.textlength(label, font=font)) + 18
    return image


def progress_preview(image: Image.Image) -> tuple[str, Image.Image, int]:
    """The preview tuple ComfyUI's ProgressBar sends to the browser."""
    return PREVIEW_FORMAT, image, PREVIEW_MAX_SIZE


def image_from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as ``[H, W, 3]`` float32 in [0, 1] (``[None]`` makes it a ComfyUI IMAGE)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
