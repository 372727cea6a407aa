import time
import torch
import comfy.model_patcher
from invedit.inversion import metrics
from invedit.nodes.options import option_defaults
from invedit.nodes.testbed_nodes import testbed_model_config
from invedit.testbed.weights import DEFAULT_MODEL_PATH, load_testbed


def testbed_in(dtype):
    file = load_testbed(DEFAULT_MODEL_PATH, verify=False)
    config = testbed_model_config(file.unet_config)
    config.set_inference_dtype(dtype, None)
    with torch.inference_mode():
        model = config.get_model({}, device=torch.device("cpu"))
        model.diffusion_model.load_state_dict(file.unet_state_dict(), strict=True)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), file.text_encoder().eval()


def test_print(pack_nodes):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model, te = testbed_in(dtype)
        with torch.inference_mode():
            images, prompts = pack_nodes["InvEditTestbedHeldOutDigits"].execute(count=1, seed=0).result
            encode = pack_nodes["InvEditTestbedTextEncode"]
            positive = encode.execute(text_encoder=te, text=prompts).result[0]
            negative = encode.execute(text_encoder=te, text="").result[0]
            latent = pack_nodes["InvEditTestbedImageToLatent"].execute(image=images).result[0]
            for steps in (20, 50):
                t = time.perf_counter()
                _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=positive, negative=negative, latent=latent, steps=steps,
                    inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero", **option_defaults()).result
                def mse(rec):
                    rebuilt = pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, negative=negative, inversion=rec, cfg=7.5).result[0]
                    out = pack_nodes["InvEditTestbedLatentToImage"].execute(latent=rebuilt, scale=1).result[0]
                    return float(metrics.mse(images.movedim(-1, 1).double(), out.movedim(-1, 1).double()).mean())
                plain = mse(record)
                t1 = time.perf_counter()
                nt = pack_nodes["InvEditNullTextInversion"].execute(model=model, inversion=record, guidance=7.5, inner_steps=10, learning_rate=0.01,
                    learning_rate_decay=0.01, early_stop=1e-5, early_stop_growth=2e-5, stop_check="before step", start_from="empty prompt").result[0]
                t2 = time.perf_counter()
                print("X", dtype, steps, "plain", plain, "null", mse(nt), "ratio", plain / mse(nt), "inv s", t1 - t, "nt s", t2 - t1, nt.unconditioning.report["loss_scale"], nt.unconditioning.report["loss_scale_overflows"], flush=True)
