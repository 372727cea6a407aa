"""The loss plot null-text shows (nodes/previews.py): a log-scale y axis and a legend naming both curves."""

from __future__ import annotations

import numpy as np
from PIL import ImageColor

from invedit.nodes import previews

STEPS_PER_LEVEL = 10
LEVELS = (1e-2, 1e-3, 1e-5)  # three loss levels, 1 and 2 decades apart
BOUND = 1e-6


def curve_rows(image: np.ndarray, colour: str, column: int) -> np.ndarray:
    """Rows where the curve of ``colour`` crosses ``column``."""
    rgb = np.array(ImageColor.getrgb(colour))
    return np.nonzero((image[:, column] == rgb).all(axis=1))[0]


def test_loss_plot_is_logarithmic_and_has_a_legend():
    losses = [level for level in LEVELS for _ in range(STEPS_PER_LEVEL)]
    steps = len(losses)
    image = np.asarray(previews.loss_plot(losses, [BOUND] * steps, steps).convert("RGB"))
    assert image.shape == (previews.PLOT_HEIGHT, previews.PLOT_WIDTH, 3)
    left, right = previews.PLOT_MARGIN_LEFT, previews.PLOT_WIDTH - previews.PLOT_MARGIN_RIGHT
    column_of = lambda step: round(left + (right - left) * step / (steps - 1))  # noqa: E731
    heights = [curve_rows(image, previews.LOSS_COLOUR, column_of(level * STEPS_PER_LEVEL + STEPS_PER_LEVEL // 2)).mean()
               for level in range(len(LEVELS))]
    one_decade, two_decades = heights[1] - heights[0], heights[2] - heights[1]
    # Log scale: 1e-2 -> 1e-3 is half the drop of 1e-3 -> 1e-5. A linear axis would make it 9.1 times
    # larger instead ((1e-2 - 1e-3) / (1e-3 - 1e-5)), so the band below tells the two apart.
    assert 0.45 < one_decade / two_decades < 0.55, (one_decade, two_decades)
    assert one_decade > 0  # lower losses are drawn lower
    legend = image[:previews.PLOT_MARGIN_TOP]
    for colour in (previews.LOSS_COLOUR, previews.BOUND_COLOUR):
        assert (legend == np.array(ImageColor.getrgb(colour))).all(axis=2).sum() > 20, f"no {colour} in the legend"
