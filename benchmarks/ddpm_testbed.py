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

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import REPO_ROOT, boot_with_pack  # noqa: E402

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nodes = boot_with_pack()
    from invedit.testbed import classifier, edits

    pack = {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("InvEdit")}
    swaps = edits.heldout_swaps(args.count, args.seed)
    predict = classifier.training_split_classifier().predict_canvases
    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        model, text_encoder = pack["InvEditTestbedModelLoader"].execute(verify=True).result

        def encode(prompts):
            return pack["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]

        source, target, negative = encode(swaps.source_prompts), encode(swaps.target_prompts), encode([""])
        latent = {"samples": swaps.canvases.clone()}
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
    table = ["| setting | swapped digit reads new | other digit keeps class | other digit error | model calls |",
             "|---|---|---|---|---|"]
    for name, score, calls in rows:
        table.append(f"| {name} | {score.swapped_reads_new:.2f} | {score.other_keeps_class:.2f} | "
                     f"{score.other_error:.3f} | {calls} |")
    text = header + "\n" + "\n".join(table) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddpm_testbed.md").write_text(text)


if __name__ == "__main__":
    main()
