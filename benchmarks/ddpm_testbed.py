"""Benchmark: edit-friendly DDPM inversion word swaps on the digits UNet, beside P2P's table.

Runs inside ComfyUI on the shipped UNet test-bed with the swaps of benchmarks/p2p_testbed.py (held-out
canvases of seed 11, each digit word for the digit 5 further on; testbed/edits.py). Each canvas's
DDPM noises are recorded once with its source prompt (InvEdit DDPM Noise Inversion, 50 ddim_uniform
steps), then sampled with the target prompt through InvEdit DDPM Edit Sampler in SamplerCustomAdvanced
for a grid of source CFG, target CFG and skip, with and without a MASK on the swapped half. Printed per
setting: the rate at which the swapped digit reads as the new one, the rate at which the other digit
keeps its class, the other digit's mean |error| against the image, and the guided model calls per edit
(recording + sampling). P2P's figures on the same swaps are in results/p2p_testbed.md.

    python benchmarks/ddpm_testbed.py [--count 8] [--seed 11] [--threads 1] [--out benchmarks/results]

Writes ``ddpm_testbed.md`` to the output folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import boot_with_pack  # noqa: E402
from testbed_swaps import encoded_swaps, parse_args, write_table  # noqa: E402

STEPS = 50
SCHEDULER = "ddim_uniform"
SOURCE_CFGS = (1.0, 3.5)
TARGET_CFGS = (3.5, 7.5, 15.0)
SKIPS = (0, 10, 18)  # 18 of 50 is the paper's 36 of 100


def ddpm_edit(nodes, pack, model, target, negative, record, sigmas, latent, cfg: float, skip: int,
              mask=None) -> torch.Tensor:
    """InvEdit DDPM Edit Sampler + CFGGuider in SamplerCustomAdvanced; canvases out."""
    guider = nodes.NODE_CLASS_MAPPINGS["CFGGuider"]().get_guider(model, target, negative, cfg)[0]
    sampler = pack["InvEditDDPMEditSampler"].execute(inversion=record, skip=skip, mask=mask, mask_feather=0).result[0]
    return nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
        nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler, sigmas, latent)[0]["samples"]


def main() -> None:
    args = parse_args(__doc__)
    nodes = boot_with_pack()
    from invedit.testbed import edits

    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        bench = encoded_swaps(nodes, "InvEditTestbedModelLoader", args)
        pack, model, swaps, predict = bench.pack, bench.model, bench.swaps, bench.predict
        source, target, negative, latent = bench.source, bench.target, bench.negative, bench.latent
        for source_cfg in SOURCE_CFGS:
            record, sigmas = pack["InvEditDDPMNoiseInversion"].execute(
                model=model, positive=source, negative=negative, latent=latent, steps=STEPS, scheduler=SCHEDULER,
                cfg=source_cfg, seed=0).result
            for target_cfg in TARGET_CFGS:
                for skip in SKIPS:
                    for masked in (False, True):
                        edited = ddpm_edit(nodes, pack, model, target, negative, record, sigmas, latent, target_cfg,
                                           skip, swaps.side_masks() if masked else None)
                        name = (f"DDPM noise{' + mask' if masked else ''}, CFG {source_cfg:g} / {target_cfg:g}, "
                                f"skip {skip}")
                        rows.append((name, edits.score_swaps(edited, swaps, predict), STEPS + STEPS - skip))
    seconds = time.perf_counter() - started
    header = (f"Edit-friendly DDPM inversion word swaps on the UNet test-bed: {args.count} held-out canvases (seed "
              f"{args.seed}, the P2P benchmark's), {len(swaps)} swaps, {STEPS} {SCHEDULER} steps, noise seed 0; "
              f"{seconds:.0f} s in all. CFG: source (recording) / target (edit). Error: the other digit's mean "
              "|error| against the image on the [-1, 1] canvas; rates: the test-bed classifier. Model calls: guided "
              "calls per edit, recording + sampling (the recording serves every edit of the image). Mask: the "
              "swapped half, no feather. P2P on the same swaps (results/p2p_testbed.md): plain regeneration 0.169, "
              "P2P 0.182, P2P + LocalBlend 0.083, all swapping 100 %; null-text inversion + P2P costs 50 DDIM + "
              "null-text (500 gradient steps) + 50 sampling calls.\n")
    write_table(args, "ddpm_testbed.md", header, rows)


if __name__ == "__main__":
    main()
