"""Published architectures with random weights, for honest speed numbers without checkpoints.

`builtin:arch-modelscope` (ModelScope T2V 1.7B UNet3D), `builtin:arch-animatediff` (Stable
Diffusion 1.5 UNet + AnimateDiff v1-5-2 motion modules), `builtin:arch-latte` (Latte-1), `builtin:arch-tuneavideo` (Tune-A-Video on SD v1.4). Append
`,width-scale=S` to multiply every channel width by S (heads keep their published count where the
architecture ties them to the width, head size shrinks) so a CPU can run them, e.g.
`builtin:arch-modelscope,width-scale=0.25`. Depth, block layout and frame handling are as
published. Text encoders and VAEs are small stand-ins with the published embedding widths and
VAE downsampling (8x): only the denoiser is timed.
"""

from __future__ import annotations

import math

from .components import ddim_scheduler, preset_vae, randomize_temporal_outputs, text_encoder as stand_in_text


def _width(channels: int, scale: float, multiple: int = 8) -> int:
    return max(multiple, int(round(channels * scale / multiple)) * multiple)


def _groups(*channels: int) -> int:
    """The published 32 norm groups where the scaled widths allow it, else the largest divisor."""
    common = math.gcd(*channels)
    return max(g for g in range(1, 33) if common % g == 0)


def build_arch_modelscope(scale: float):
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    # multiples of 32: UNet3D's transformer_in always uses 32 norm groups
    widths = tuple(_width(c, scale, 32) for c in (320, 640, 1280, 1280))
    cross = _width(1024, scale, 64)
    unet = UNet3DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        norm_num_groups=_groups(*widths), cross_attention_dim=cross,
        attention_head_dim=max(1, int(round(64 * scale))),  # UNet3D passes it on as the head *count*
    ).eval()
    tokenizer, text_encoder = stand_in_text(cross, 77, t5=False)
    return TextToVideoSDPipeline(vae=preset_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ddim_scheduler())


def build_arch_animatediff(scale: float):
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    widths = tuple(_width(c, scale, 32) for c in (320, 640, 1280, 1280))
    cross = _width(768, scale, 64)
    groups = _groups(*widths)
    unet2d = UNet2DConditionModel(
        sample_size=64, block_out_channels=widths, layers_per_block=2, norm_num_groups=groups, cross_attention_dim=cross,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    adapter = MotionAdapter(block_out_channels=widths, motion_layers_per_block=2, motion_num_attention_heads=8,
                            motion_norm_num_groups=groups, motion_max_seq_length=32, use_motion_mid_block=True)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    tokenizer, text_encoder = stand_in_text(cross, 77, t5=False)
    return AnimateDiffPipeline(vae=preset_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=adapter, scheduler=ddim_scheduler())


def build_arch_latte(scale: float):
    from diffusers import LattePipeline, LatteTransformer3DModel

    heads = max(1, int(round(16 * scale)))
    caption = _width(4096, scale, 64)
    transformer = LatteTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, patch_size=2,
        sample_size=32, caption_channels=caption, cross_attention_dim=heads * 72, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=16,
    ).eval()
    tokenizer, text_encoder = stand_in_text(caption, 120, t5=True)
    return LattePipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=preset_vae(), transformer=transformer, scheduler=ddim_scheduler())


def build_arch_tuneavideo(scale: float):
    from .tuneavideo import TuneAVideoPipeline, TuneAVideoUNet

    widths = tuple(_width(c, scale, 32) for c in (320, 640, 1280, 1280))
    cross = _width(768, scale, 64)
    unet = TuneAVideoUNet(  # Stable Diffusion v1.4's UNet config, the checkpoint Tune-A-Video tunes
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        norm_num_groups=_groups(*widths), cross_attention_dim=cross, attention_head_dim=8,
    ).eval()
    randomize_temporal_outputs(unet)
    tokenizer, text_encoder = stand_in_text(cross, 77, t5=False)
    return TuneAVideoPipeline(vae=preset_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ddim_scheduler())
