"""A bounded store of cross-attention maps, for showing where each word attends.

Storing every map of every layer and step is what makes the reference Prompt-to-Prompt code run
out of memory (SDXL at 1024 needs over 12 GB for them). This store keeps, per cross-attention
layer, the head-averaged maps of the conditional rows summed over the steps (one
``[rows, h, w, Nk]`` float32 tensor per layer), and refuses new layers once a byte budget or a
count of layers is reached. Its contents are per-run state: :meth:`CrossMapStore.reset` clears it.
"""

from __future__ import annotations

import torch

from .context import AttentionSite

DEFAULT_MAP_STORE_BYTES = 64 * 2**20
"""Default budget of stored maps: 64 MiB (all SD1.x cross layers of a 512x512 edit fit)."""

_FLOAT32_BYTES = 4


class CrossMapStore:
    """Head-averaged cross-attention maps per layer, summed over steps, within a budget.

    Args:
        max_bytes: the most bytes the stored maps may take.
        max_maps: the most layers stored (``None``: no limit besides ``max_bytes``).
        max_query_positions: store only layers with at most this many queries (``None``: all).
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAP_STORE_BYTES,
        max_maps: int | None = None,
        max_query_positions: int | None = None,
    ) -> None:
        if max_bytes < 0 or (max_maps is not None and max_maps < 0):
            raise ValueError(f"Map store limits must not be negative (max_bytes={max_bytes}, max_maps={max_maps}).")
        self.max_bytes = max_bytes
        self.max_maps = max_maps
        self.max_query_positions = max_query_positions
        self.reset()

    def reset(self) -> None:
        """Drop every stored map (call before each run)."""
        self._sums: dict[tuple[tuple[str, int], int], torch.Tensor] = {}
        self._calls: dict[tuple[tuple[str, int], int], int] = {}
        self._shapes: dict[tuple[tuple[str, int], int], tuple[int, int]] = {}
        self.refused: set[tuple[tuple[str, int], int]] = set()

    @property
    def used_bytes(self) -> int:
        """Bytes held by the stored maps."""
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    def wants(self, site: AttentionSite, rows: int, key_length: int) -> bool:
        """Whether a call at ``site`` should materialise maps for this store (within budget)."""
        if not site.is_cross:
            return False
        if self.max_query_positions is not None and site.query_positions > self.max_query_positions:
            return False
        key = (site.block, site.depth)
        if key in self._sums:
            return True
        size = rows * site.query_positions * key_length * _FLOAT32_BYTES
        room = self.used_bytes + size <= self.max_bytes and (self.max_maps is None or len(self._sums) < self.max_maps)
        if not room:
            self.refused.add(key)
        return room

    def add(self, site: AttentionSite, maps: torch.Tensor) -> None:
        """Add ``[rows, Nq, Nk]`` head-averaged maps of one call at ``site``."""
        key = (site.block, site.depth)
        maps = maps.detach().float()
        if key in self._sums:
            if self._sums[key].shape != maps.shape:
                raise ValueError(
                    f"Maps of shape {tuple(maps.shape)} at {key} follow maps of shape {tuple(self._sums[key].shape)}; "
                    f"reset the store between runs."
                )
            self._sums[key] += maps
            self._calls[key] += 1
        else:
            self._sums[key] = maps.clone()
            self._calls[key] = 1
            self._shapes[key] = site.query_shape

    def layer_maps(self) -> dict[tuple[tuple[str, int], int], torch.Tensor]:
        """Per ``(block, depth)``: the maps averaged over calls, ``[rows, h, w, Nk]``."""
        return {
            key: (total / self._calls[key]).view(total.shape[0], *self._shapes[key], total.shape[-1])
            for key, total in self._sums.items()
        }

    def aggregate(self, query_shape: tuple[int, int]) -> torch.Tensor | None:
        """Mean over the stored layers of size ``query_shape`` (``[rows, h, w, Nk]``), or ``None``."""
        maps = [m for key, m in self.layer_maps().items() if self._shapes[key] == tuple(query_shape)]
        if not maps:
            return None
        return torch.stack(maps).mean(0)
