"""LocalBlend: confine a Prompt-to-Prompt edit to where the chosen words attend.

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (ICLR 2023),
Sec. 3.2 "local editing", with the rules of the null-text inversion code (Mokady et al.,
"Null-text Inversion for Editing Real Images using Guided Diffusion Models", CVPR 2023):

1. the cross-attention maps of the blend words, from the layers at 1/4 of the latent's size
   (16x16 for a 64x64 SD1.x latent), summed over the words, averaged over heads and layers and
   accumulated over the steps so far;
2. a 3x3 max-pool, resized (nearest) to the latent size, divided by its maximum, kept above 0.3;
3. each edited row's mask is joined with the source row's; "subtract" words (no pooling) cut
   their region out of it;
4. after each step from the start step on: ``x_edit = x_src + mask * (x_edit - x_src)``.

The accumulated maps are this object's per-run state: :meth:`LocalBlend.reset` clears them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .context import AttentionSite
from .edits import StepWindow
from .tokens import PromptEditError, TokenizedPrompt

DEFAULT_BLEND_START = 0.2
"""LocalBlend starts at step ``int(0.2 * n_steps)`` (the null-text code)."""
DEFAULT_BLEND_THRESHOLD = 0.3
"""Mask threshold on the max-normalised, pooled word maps."""
DEFAULT_SUBTRACT_THRESHOLD = 0.3
"""Threshold on the max-normalised maps of the subtract words (not pooled)."""
DEFAULT_BLEND_LAYER_DOWNSAMPLE = 4
"""Maps come from the layers whose feature map is the latent divided by 4 (16x16 of 64x64)."""
DEFAULT_BLEND_POOL_SIZE = 3
"""Side of the max-pool window that widens the word maps."""

_MIN_MAX = 1e-12  # an all-zero map is divided by this instead of by its zero maximum
_LISTED_DOWNSAMPLES = tuple(2**k for k in range(7))  # 1 ... 64, the levels a UNet can have


def layer_shape(latent_shape: Sequence[int], downsample: int) -> tuple[int, int]:
    """``(height, width)`` of the UNet level at ``latent / downsample``.

    Each stride-2 convolution of the UNet rounds up (a 13-pixel side becomes 7, then 4), so the
    level's side is ``ceil(side / downsample)``, also for odd latent sizes.
    """
    return tuple(-(-int(side) // downsample) for side in latent_shape[-2:])


class LocalBlend:
    """Mask from the blend words' cross-attention maps, blended into the latents after each step.

    Args:
        words: per row of a conditional chunk (source first, then each edit), the key positions
            of that row's blend words.
        subtract: optional per-row key positions of words whose region is cut out of the mask.
        start: the blend applies from step ``int(start * n_steps)`` on.
        threshold: mask threshold of the word maps.
        subtract_threshold: mask threshold of the subtract maps.
        layer_downsample: latent size / layer size of the layers whose maps are used.
        pool_size: max-pool window of the word maps (odd).
    """

    def __init__(
        self,
        words: Sequence[Sequence[int]],
        subtract: Sequence[Sequence[int]] | None = None,
        *,
        start: float = DEFAULT_BLEND_START,
        threshold: float = DEFAULT_BLEND_THRESHOLD,
        subtract_threshold: float = DEFAULT_SUBTRACT_THRESHOLD,
        layer_downsample: int = DEFAULT_BLEND_LAYER_DOWNSAMPLE,
        pool_size: int = DEFAULT_BLEND_POOL_SIZE,
    ) -> None:
        if not any(len(row) for row in words):
            raise ValueError("LocalBlend needs at least one blend word position.")
        if subtract is not None and len(subtract) != len(words):
            raise ValueError(f"LocalBlend got blend words for {len(words)} rows but subtract words for {len(subtract)}.")
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"The LocalBlend pool size must be odd and positive, got {pool_size}.")
        self.words = tuple(tuple(int(p) for p in row) for row in words)
        self.subtract = None if subtract is None else tuple(tuple(int(p) for p in row) for row in subtract)
        self.start = StepWindow(start, 1.0)
        self.threshold = threshold
        self.subtract_threshold = subtract_threshold
        self.layer_downsample = layer_downsample
        self.pool_size = pool_size
        self.reset()

    @classmethod
    def from_words(
        cls,
        prompts: Sequence[TokenizedPrompt],
        words: Sequence[str | Sequence[str]],
        subtract_words: Sequence[str | Sequence[str]] | None = None,
        **options,
    ) -> LocalBlend:
        """Blend words per prompt (source first), e.g. ``(["cat"], ["tiger"])``.

        Raises:
            PromptEditError: a word is not in its prompt, or the lists do not match the prompts.
        """

        def positions(lists, what):
            if len(lists) != len(prompts):
                raise PromptEditError(
                    f"Give {what} for each of the {len(prompts)} prompts (source first); got {len(lists)} lists."
                )
            rows = []
            for prompt, chosen in zip(prompts, lists):
                chosen = [chosen] if isinstance(chosen, str) else list(chosen)
                rows.append(tuple(p for word in chosen for p in prompt.positions_of(word)))
            return rows

        subtract = None if subtract_words is None else positions(subtract_words, "subtract words")
        return cls(positions(words, "blend words"), subtract, **options)

    @property
    def rows(self) -> int:
        """Rows of a conditional chunk this blend expects (source plus edits)."""
        return len(self.words)

    def reset(self) -> None:
        """Forget the accumulated maps (call before each run)."""
        self._word_sum: torch.Tensor | None = None
        self._subtract_sum: torch.Tensor | None = None
        self._layers = 0
        self._cross_shapes: set[tuple[int, int]] = set()
        self._latent_shape: tuple[int, int] | None = None

    @property
    def layers_seen(self) -> int:
        """Number of (layer, call) maps accumulated since the last reset."""
        return self._layers

    def uses(self, site: AttentionSite, latent_shape: tuple[int, int] | None) -> bool:
        """Whether this layer's cross maps feed the mask."""
        if not site.is_cross:
            return False
        if latent_shape is None:
            raise ValueError("LocalBlend needs the latent's (height, width) in the attention context (latent_shape).")
        self._cross_shapes.add(tuple(site.query_shape))
        self._latent_shape = tuple(latent_shape)
        return tuple(site.query_shape) == layer_shape(latent_shape, self.layer_downsample)

    def check_fed(self) -> None:
        """Raise if cross-attention layers ran since the last reset but none fed the mask.

        Raises:
            ValueError: no cross-attention layer sits at ``latent / layer_downsample``; the
                message lists the downsamples this model's layers have.
        """
        if self._layers > 0 or not self._cross_shapes or self._latent_shape is None:
            return
        height, width = self._latent_shape
        sizes = ", ".join(f"{h}x{w}" for h, w in sorted(self._cross_shapes, reverse=True))
        usable = [d for d in _LISTED_DOWNSAMPLES if layer_shape(self._latent_shape, d) in self._cross_shapes]
        raise ValueError(
            f"LocalBlend found no cross-attention layer at 1/{self.layer_downsample} of the {height}x{width} "
            f"latent, so it would blend nothing. This model's cross-attention layers are {sizes}: set the "
            f"blend layer downsample (blend_layer_downsample) to one of {', '.join(map(str, usable))}."
        )

    def accumulate(self, site: AttentionSite, maps: torch.Tensor) -> None:
        """Add one layer's maps of a conditional chunk.

        Args:
            site: the layer (its ``query_shape`` gives the map's height and width).
            maps: ``[rows, Nq, Nk]`` head-averaged cross-attention maps (edited rows as edited).
        """
        if maps.shape[0] != self.rows:
            raise ValueError(f"LocalBlend was set up for {self.rows} rows, got maps of {maps.shape[0]}.")
        word_maps = self._word_maps(maps, self.words, site)
        if self._word_sum is not None and self._word_sum.shape != word_maps.shape:
            raise ValueError(
                f"LocalBlend got maps of shape {tuple(word_maps.shape)} after {tuple(self._word_sum.shape)}; "
                f"reset it between runs."
            )
        self._word_sum = word_maps if self._word_sum is None else self._word_sum + word_maps
        if self.subtract is not None:
            subtract_maps = self._word_maps(maps, self.subtract, site)
            self._subtract_sum = subtract_maps if self._subtract_sum is None else self._subtract_sum + subtract_maps
        self._layers += 1

    @staticmethod
    def _word_maps(maps: torch.Tensor, rows: Sequence[Sequence[int]], site: AttentionSite) -> torch.Tensor:
        """``[rows, h, w]`` float32: per row, the sum of its words' maps."""
        key_length = maps.shape[-1]
        out = maps.new_zeros((maps.shape[0], maps.shape[1]), dtype=torch.float32)
        for row, positions in enumerate(rows):
            if positions and max(positions) >= key_length:
                raise ValueError(f"A blend word sits at key position {max(positions)} but there are {key_length} keys.")
            if positions:
                out[row] = maps[row][:, list(positions)].float().sum(-1)
        return out.view(maps.shape[0], *site.query_shape)

    def mask(self, latent_shape: tuple[int, int]) -> torch.Tensor | None:
        """``[rows, 1, H, W]`` float 0/1 mask at the latent size, or ``None`` before any map."""
        if self._word_sum is None:
            return None
        pad = self.pool_size // 2
        words = self._word_sum[:, None] / self._layers
        pooled = F.max_pool2d(words, self.pool_size, stride=1, padding=pad)
        mask = self._above(pooled, latent_shape, self.threshold)
        if self._subtract_sum is not None:
            mask = mask & ~self._above(self._subtract_sum[:, None] / self._layers, latent_shape, self.subtract_threshold)
        return mask.float()

    @staticmethod
    def _above(maps: torch.Tensor, latent_shape: tuple[int, int], threshold: float) -> torch.Tensor:
        """Resize to the latent, divide by each row's maximum, threshold, join with the source row."""
        resized = F.interpolate(maps, size=tuple(latent_shape), mode="nearest")
        peak = resized.amax(dim=(2, 3), keepdim=True).clamp_min(_MIN_MAX)
        above = resized / peak > threshold
        return above | above[:1]

    def apply(self, x: torch.Tensor, step: int, n_steps: int) -> torch.Tensor:
        """Blend the latents after step ``step``: ``x_src + mask * (x_edit - x_src)``.

        Args:
            x: ``[rows, C, H, W]`` latents of the batch ``[source, edit_1, ...]``.

        Returns:
            The blended latents (``x`` itself before the start step or before any map).
        """
        if not self.start.contains(step, n_steps) or self._word_sum is None:
            return x
        if x.shape[0] != self.rows:
            raise ValueError(f"LocalBlend was set up for {self.rows} rows, got a latent batch of {x.shape[0]}.")
        mask = self.mask(tuple(x.shape[-2:])).to(device=x.device, dtype=x.dtype)
        source = x[:1]
        return source + mask * (x - source)
