"""Benchmark: FlowEdit word swaps on the flow test-bed, beside a plain regeneration; picks the test-bed preset.

Runs inside ComfyUI on the shipped flow test-bed (a tiny trained Flux). Held-out canvases ("a photo of
LEFT and RIGHT", seed 11, as the P2P test-bed test) are each edited twice, swapping one digit word for
the digit 5 further on (testbed/edits.py). For every setting it prints, over the 2 x count swaps: the
rate at which the test-bed classifier reads the swapped digit as the new one, the rate at which the
other digit keeps its class, the other digit's mean |error| against the image ([-1, 1] canvas), and the
guided model calls per edit. Settings:

- FlowEdit (InvEdit FlowEdit Guider + Sampler in SamplerCustomAdvanced), 28 steps of the model's
  ``simple`` schedule, a grid of n_max and source / target CFG; the same with a MASK on the swapped
  half (feather 0: outside it the source is kept exactly);
- plain regeneration: Euler inversion of the source (28 steps, cfg 1, the source prompt) sampled back
  with the target prompt (the flow analogue of the UNet P2P table's "plain regeneration").

    python benchmarks/flowedit_testbed.py [--count 8] [--seed 11] [--threads 1] [--out benchmarks/results]

Writes ``flowedit_testbed.md`` to the output folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import boot_with_pack, inversion_options  # noqa: E402
from testbed_swaps import encoded_swaps, parse_args, write_table  # noqa: E402

STEPS = 28
SCHEDULER = "simple"
N_MAX_GRID = (12, 16, 20, 24, 28)
CFG_GRID = ((1.0, 1.0), (2.0, 2.0), (2.0, 4.0), (2.0, 6.0), (1.0, 4.0))
PLAIN_CFGS = (1.0, 2.0, 4.0)


def flowedit_edit(nodes, pack, model, source, target, negative, latent, sigmas, source_cfg: float, target_cfg: float,
                  n_max: int, mask=None, seed: int = 0) -> torch.Tensor:
    """One batched FlowEdit run (custom preset) through SamplerCustomAdvanced; canvases out."""
    guider = pack["InvEditFlowEditGuider"].execute(model=model, source=source, target=target, preset="custom",
                                                   source_cfg=source_cfg, target_cfg=target_cfg,
                                                   negative=negative).result[0]
    sampler = pack["InvEditFlowEditSampler"].execute(preset="custom", n_max=n_max, n_min=0, n_avg=1, seed=seed,
                                                     mask=mask, mask_feather=0).result[0]
    return nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
        nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler, sigmas, latent)[0]["samples"]


def plain_regeneration(pack, model, source, target, negative, latent, cfg: float) -> torch.Tensor:
    """Euler inversion at cfg 1 with the source prompt, sampled back with the target prompt at ``cfg``."""
    _, record, _ = pack["InvEditDDIMInversion"].execute(
        model=model, positive=source, negative=negative, latent=latent,
        **inversion_options(steps=STEPS, inversion_cfg=1.0, scheduler=SCHEDULER, clean_level="zero")).result
    return pack["InvEditReconstruct"].execute(model=model, positive=target, inversion=record, cfg=cfg,
                                              negative=negative).result[0]["samples"]


def main() -> None:
    args = parse_args(__doc__)
    nodes = boot_with_pack()
    from invedit.inversion.flowedit import FlowEditSettings, model_calls
    from invedit.testbed import edits

    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        bench = encoded_swaps(nodes, "InvEditTestbedFlowModelLoader", args)
        pack, model, swaps, predict = bench.pack, bench.model, bench.swaps, bench.predict
        source, target, negative, latent = bench.source, bench.target, bench.negative, bench.latent
        sigmas = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(model, SCHEDULER, STEPS, 1.0)[0]
        for cfg in PLAIN_CFGS:
            edited = plain_regeneration(pack, model, source, target, negative, latent, cfg)
            rows.append((f"plain regeneration (Euler inversion, target prompt at cfg {cfg:g})",
                         edits.score_swaps(edited, swaps, predict), 2 * STEPS))
        for source_cfg, target_cfg in CFG_GRID:
            for n_max in N_MAX_GRID:
                calls = model_calls(STEPS, FlowEditSettings(n_max=n_max))
                for masked in (False, True):
                    mask = swaps.side_masks() if masked else None
                    edited = flowedit_edit(nodes, pack, model, source, target, negative, latent, sigmas, source_cfg,
                                           target_cfg, n_max, mask)
                    name = (f"FlowEdit{' + mask' if masked else ''}, n_max {n_max}, CFG {source_cfg:g} / "
                            f"{target_cfg:g}")
                    rows.append((name, edits.score_swaps(edited, swaps, predict), calls))
    seconds = time.perf_counter() - started
    header = (f"FlowEdit word swaps on the flow test-bed: {args.count} held-out canvases (seed {args.seed}), "
              f"{len(swaps)} swaps (each digit word for the digit {edits.SWAP_OFFSET} further on), {STEPS} steps "
              f"of the '{SCHEDULER}' schedule, FlowEdit seed 0; {seconds:.0f} s in all. Error: the other digit's "
              "mean |error| against the image on the [-1, 1] canvas; rates: the test-bed classifier. Model calls: "
              "guided denoiser calls per edit (each runs 2 network rows when CFG is not 1); plain regeneration: "
              f"{STEPS} inversion + {STEPS} sampling calls. Mask: the swapped half, no feather.\n")
    write_table(args, "flowedit_testbed.md", header, rows)


if __name__ == "__main__":
    main()
