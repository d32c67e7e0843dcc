"""The builders of the tiny text-to-video models (`builtin:tiny-*`) and the trained references (`builtin:ref-*`).

Each is a complete diffusers pipeline — denoiser, VAE, text encoder, tokenizer, scheduler —
small enough to build in about a second and to run the full sampling loop on a CPU. They are
the test fixtures of the project and the default model of `make demo`.
"""

from __future__ import annotations

from .components import TEXT_LENGTH, byte_tokenizer, clip_text, ddim_scheduler, randomize_temporal_outputs, tiny_vae


def build_tiny_unet3d():
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    unet = UNet3DConditionModel(
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=8, layers_per_block=1, sample_size=8,
    )
    tokenizer = byte_tokenizer(TEXT_LENGTH)
    return TextToVideoSDPipeline(
        vae=tiny_vae(), text_encoder=clip_text(len(tokenizer), 32), tokenizer=tokenizer,
        unet=unet.eval(), scheduler=ddim_scheduler(),
    )


def build_tiny_animatediff():
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel(
        block_out_channels=(16, 32), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, layers_per_block=1, sample_size=8,
    )
    adapter = MotionAdapter(
        block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=16,
        motion_num_attention_heads=2, motion_max_seq_length=32,
    )
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    tokenizer = byte_tokenizer(TEXT_LENGTH)
    return AnimateDiffPipeline(
        vae=tiny_vae(), text_encoder=clip_text(len(tokenizer), 16), tokenizer=tokenizer,
        unet=unet, motion_adapter=adapter, scheduler=ddim_scheduler(),
    )


def build_tiny_latte():
    from diffusers import LattePipeline, LatteTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    transformer = LatteTransformer3DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=32, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=8,
    ).eval()
    tokenizer = byte_tokenizer(120, t5_style=True)
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    ).eval()
    return LattePipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_vae(), transformer=transformer, scheduler=ddim_scheduler(),
    )


def build_tiny_tuneavideo():
    from .tuneavideo import TuneAVideoPipeline, TuneAVideoUNet

    unet = TuneAVideoUNet(
        block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        attention_head_dim=4, sample_size=8,
    )
    randomize_temporal_outputs(unet)
    tokenizer = byte_tokenizer(TEXT_LENGTH)
    return TuneAVideoPipeline(vae=tiny_vae(), text_encoder=clip_text(len(tokenizer), 32), tokenizer=tokenizer,
                              unet=unet.eval(), scheduler=ddim_scheduler())


def build_ref_unet3d():
    from .reference.models import build_reference

    return build_reference("ref-unet3d")


def build_ref_latte():
    from .reference.models import build_reference

    return build_reference("ref-latte")


def build_ref_wan():
    from .reference.models import build_reference

    return build_reference("ref-wan")
