"""Built-in tiny text-to-video models (`builtin:NAME`), built deterministically from config.

Each is a complete diffusers pipeline — denoiser, VAE, text encoder, tokenizer, scheduler —
small enough to build in about a second and to run the full sampling loop on a CPU. They are
the test fixtures of the project and the default model of `make demo`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import F3Error

TEXT_LENGTH = 32  # tokens per prompt for the CLIP-style tiny encoders


def byte_tokenizer(model_max_length: int, *, t5_style: bool = False):
    """A byte-level tokenizer (no merges): any text maps to bytes, no vocabulary download.

    CLIP-style: ``<|startoftext|> bytes <|endoftext|>`` padded with ``<|endoftext|>``.
    T5-style: ``bytes </s>`` padded with ``<pad>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "</s>", "<unk>"] if t5_style else ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[-1] if t5_style else None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if t5_style:
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        kwargs = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
        )
        kwargs = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length, **kwargs)


def _clip_text(vocab_size: int, hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def _tiny_vae(scale_levels: int = 2):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * scale_levels,
        up_block_types=("UpDecoderBlock2D",) * scale_levels,
        block_out_channels=(8, 16)[:scale_levels], layers_per_block=1, norm_num_groups=8, sample_size=32,
    ).eval()


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def build_tiny_unet3d():
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    unet = UNet3DConditionModel(
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=8, layers_per_block=1, sample_size=16,
    )
    tokenizer = byte_tokenizer(TEXT_LENGTH)
    return TextToVideoSDPipeline(
        vae=_tiny_vae(), text_encoder=_clip_text(len(tokenizer), 32), tokenizer=tokenizer,
        unet=unet.eval(), scheduler=_scheduler(),
    )


def build_tiny_animatediff():
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel(
        block_out_channels=(16, 32), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, layers_per_block=1, sample_size=16,
    )
    adapter = MotionAdapter(
        block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=16,
        motion_num_attention_heads=2, motion_max_seq_length=32,
    )
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    tokenizer = byte_tokenizer(TEXT_LENGTH)
    return AnimateDiffPipeline(
        vae=_tiny_vae(), text_encoder=_clip_text(len(tokenizer), 16), tokenizer=tokenizer,
        unet=unet, motion_adapter=adapter, scheduler=_scheduler(),
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
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_tiny_vae(), transformer=transformer, scheduler=_scheduler(),
    )


def randomize_temporal_outputs(unet) -> None:
    """Tune-A-Video initialises ``attn_temp.to_out.0.weight`` to zero (a new layer starts as a no-op);
    a tuned model's is not, so random-weight models draw it like every other weight."""
    for name, module in unet.named_modules():
        if name.endswith("attn_temp"):
            torch.nn.init.kaiming_uniform_(module.to_out[0].weight, a=5 ** 0.5)  # nn.Linear's default


def build_tiny_tuneavideo():
    from .tuneavideo import TuneAVideoPipeline, TuneAVideoUNet

    unet = TuneAVideoUNet(
        block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        attention_head_dim=4, sample_size=16,
    )
    randomize_temporal_outputs(unet)
    tokenizer = byte_tokenizer(TEXT_LENGTH)
    return TuneAVideoPipeline(vae=_tiny_vae(), text_encoder=_clip_text(len(tokenizer), 32), tokenizer=tokenizer,
                              unet=unet.eval(), scheduler=_scheduler())


def build_ref_unet3d():
    from .reference.models import build_reference

    return build_reference("ref-unet3d")


def build_ref_latte():
    from .reference.models import build_reference

    return build_reference("ref-latte")


# name -> (builder, default shapes in pixels (frames, height, width), description)
BUILTINS: dict[str, tuple[Callable, tuple[int, int, int], str]] = {
    "tiny-unet3d": (build_tiny_unet3d, (8, 32, 32), "ModelScope-style UNet3DConditionModel, 2 levels, CLIP-style text encoder"),
    "tiny-animatediff": (build_tiny_animatediff, (8, 32, 32), "AnimateDiff UNetMotionModel, 2 levels, motion modules"),
    "tiny-latte": (build_tiny_latte, (8, 16, 16), "LatteTransformer3DModel, 2 layers, T5-style text encoder"),
    "tiny-tuneavideo": (build_tiny_tuneavideo, (8, 32, 32), "Tune-A-Video UNet (SD v1 layout, 2 levels), CLIP-style text encoder"),
}
# trained reference models of the moving-shapes domain (weights in models/reference/weights)
REFERENCES: dict[str, tuple[Callable, tuple[int, int, int], str]] = {
    "ref-unet3d": (build_ref_unet3d, (8, 16, 16), "trained moving-shapes UNet3DConditionModel, MiniLM text encoder"),
    "ref-latte": (build_ref_latte, (8, 16, 16), "trained moving-shapes LatteTransformer3DModel, MiniLM text encoder"),
}


def build_builtin(name: str, seed: int = 0):
    """Build the pipeline of `builtin:NAME` with weights drawn from `seed` (deterministic).

    NAME is a tiny model (BUILTINS) or an architecture preset (`arch-*[,width-scale=S]`).
    """
    from .presets import PRESETS, parse_preset

    if name.startswith("arch-"):
        base, scale = parse_preset(name)
        if base not in PRESETS:
            raise F3Error(f"unknown preset '{base}'; choose one of: {', '.join(sorted(PRESETS))}")
        preset, shapes, _ = PRESETS[base]
        builder = lambda: preset(scale)  # noqa: E731
    elif name not in BUILTINS and name not in REFERENCES:
        known = sorted(BUILTINS) + sorted(REFERENCES) + sorted(PRESETS)
        raise F3Error(f"unknown builtin model '{name}'; choose one of: {', '.join(known)}")
    else:
        builder, shapes, _ = BUILTINS.get(name) or REFERENCES[name]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        pipe = builder()
    finally:
        torch.random.set_rng_state(state)
    pipe.set_progress_bar_config(disable=True)
    return pipe, shapes
