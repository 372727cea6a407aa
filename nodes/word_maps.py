"""Cross-attention maps of a Prompt-to-Prompt run, per word, as an image grid (no ComfyUI imports).

The maps come from a :class:`~invedit.attention.CrossMapStore` (head-averaged, summed over the
run's steps, per layer). As in the Prompt-to-Prompt notebooks (``show_cross_attention``), the layers
of one size are averaged, each word's map is the sum over its tokens, divided by its maximum,
and drawn with the word under it: one row of the grid per prompt (source first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..attention import CrossMapStore, TokenizedPrompt, layer_shape
from .previews import image_from_pil

LABEL_HEIGHT = 14
CELL_GAP = 2
BACKGROUND = (30, 30, 30)
LABEL_COLOUR = (230, 230, 230)
_MIN_PEAK = 1e-12  # an all-zero map is divided by this instead of by its zero maximum


@dataclass(frozen=True)
class AttentionMaps:
    """The ``INVEDIT_ATTENTION_MAPS`` value: a run's stored cross-attention maps and its prompts.

    Attributes:
        prompts: source first, then each edited prompt (one per map row).
        layers: per ``(block, depth)``, ``[rows, h, w, keys]`` maps averaged over the calls.
        latent_shape: ``(height, width)`` of the latent.
        refused: layers the store had no room for (its byte budget).
    """

    prompts: tuple[TokenizedPrompt, ...]
    layers: dict
    latent_shape: tuple[int, int]
    refused: tuple = ()

    @classmethod
    def from_store(cls, store: CrossMapStore, prompts, latent_shape) -> "AttentionMaps":
        return cls(tuple(prompts), store.layer_maps(), tuple(int(s) for s in latent_shape),
                   tuple(sorted(store.refused)))

    def sizes(self) -> list[tuple[int, int]]:
        """The ``(h, w)`` of the stored layers, largest first."""
        return sorted({tuple(m.shape[1:3]) for m in self.layers.values()}, key=lambda s: -s[0] * s[1])

    def aggregate(self, layer_downsample: int = 0) -> Optional[torch.Tensor]:
        """``[rows, h, w, keys]``: the mean over the layers at ``latent / layer_downsample``.

        With ``layer_downsample`` 0 every stored layer is resized (bilinear) to the largest size
        and averaged. ``None`` when no stored layer has the asked size.
        """
        if not self.layers:
            return None
        if layer_downsample > 0:
            wanted = layer_shape(self.latent_shape, layer_downsample)
            maps = [m for m in self.layers.values() if tuple(m.shape[1:3]) == wanted]
            return torch.stack(maps).mean(0) if maps else None
        height, width = self.sizes()[0]
        resized = [F.interpolate(m.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
                   .permute(0, 2, 3, 1) for m in self.layers.values()]
        return torch.stack(resized).mean(0)

    def word_mass(self, row: int, word: str, layer_downsample: int = 0) -> float:
        """Mean attention mass of ``word`` (all its tokens) over the queries of a row."""
        maps = self.aggregate(layer_downsample)
        if maps is None:
            raise ValueError("No stored maps of that layer size.")
        positions = list(self.prompts[row].positions_of(word))
        return float(maps[row][..., positions].sum(-1).mean())


def word_maps(prompt: TokenizedPrompt, maps: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(word, [h, w] map)`` per word of ``prompt``: its tokens' maps summed, divided by the maximum."""
    out = []
    for word, positions in zip(prompt.words, prompt.word_positions):
        word_map = maps[..., list(positions)].sum(-1) if positions else torch.zeros(maps.shape[:2])
        out.append((word, word_map / word_map.max().clamp_min(_MIN_PEAK)))
    return out


def word_map_grid(prompts, maps: torch.Tensor, cell_height: int, labels: bool = True) -> torch.Tensor:
    """The grid image: one row per prompt, one cell per word, ``[H, W, 3]`` float in [0, 1].

    Args:
        prompts: the prompts of the map rows.
        maps: ``[rows, h, w, keys]`` aggregated maps.
        cell_height: pixel height of a cell (its width follows the maps' aspect ratio).
        labels: write each word under its cell.
    """
    rows, height, width = maps.shape[:3]
    cell_width = max(1, round(cell_height * width / height))
    label = LABEL_HEIGHT if labels else 0
    columns = max(len(p.words) for p in prompts)
    canvas = Image.new("RGB", (columns * (cell_width + CELL_GAP) + CELL_GAP,
                               rows * (cell_height + label + CELL_GAP) + CELL_GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row, prompt in enumerate(prompts):
        top = CELL_GAP + row * (cell_height + label + CELL_GAP)
        for column, (word, word_map) in enumerate(word_maps(prompt, maps[row])):
            left = CELL_GAP + column * (cell_width + CELL_GAP)
            cell = F.interpolate(word_map[None, None].float(), size=(cell_height, cell_width), mode="bilinear",
                                 align_corners=False)[0, 0].clamp(0.0, 1.0)
            grey = (cell.numpy() * 255.0).round().astype(np.uint8)
            canvas.paste(Image.fromarray(grey, mode="L").convert("RGB"), (left, top))
            if labels:
                draw.text((left + 2, top + cell_height + 1), word[: max(1, cell_width // 6)], fill=LABEL_COLOUR)
    return image_from_pil(canvas)
