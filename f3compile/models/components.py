"""Stand-in pipeline parts shared by the builtin models and the architecture presets.

A byte-level tokenizer (no vocabulary download), small CLIP- and T5-style text encoders, small
VAEs and the DDIM scheduler of the Stable Diffusion family: every builtin is built from these and
its own denoiser, deterministically and offline.
"""

from __future__ import annotations

import torch

TEXT_LENGTH = 32  # tokens per prompt for the CLIP-style tiny encoders


def hashed_embeddings(texts: list[str], length: int, dim: int) -> torch.Tensor:
    """(N, length, dim) fixed pseudo-random embeddings, each seeded by its text's sha256: the prompts
    of a bare denoiser, which comes without a text encoder."""
    import hashlib

    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rows.append(torch.randn((length, dim), generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


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


def clip_text(vocab_size: int, hidden: int):
    """The tiny models' CLIP text encoder: 2 layers, 4 heads, `TEXT_LENGTH` positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def text_encoder(hidden: int, length: int, t5: bool):
    """(tokenizer, encoder) for a preset: one layer with the published embedding width `hidden`."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = byte_tokenizer(length, t5_style=t5)
    if t5:
        config = T5Config(vocab_size=len(tokenizer), d_model=hidden, d_kv=64, num_heads=max(1, hidden // 64), d_ff=2 * hidden,
                          num_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        return tokenizer, T5EncoderModel(config).eval()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                            num_attention_heads=max(1, hidden // 64), max_position_embeddings=length,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return tokenizer, CLIPTextModel(config).eval()


def t5_family_text(width: int, length: int, layers: int = 2, umt5: bool = False):
    """(tokenizer, encoder) stand-ins of the T5 family (Wan's UMT5, CogVideoX's T5): byte-level
    tokens padded to `length`, `width` wide, 4 heads below width 64, else heads of 64."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    tokenizer = byte_tokenizer(length, t5_style=True)
    heads = 4 if width < 64 else width // 64
    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(vocab_size=len(tokenizer), d_model=width, d_kv=width // heads, num_heads=heads, d_ff=2 * width,
                          num_layers=layers, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, model_class(config).eval()


def tiny_vae(scale_levels: int = 2):
    """A 2-level VAE (4x downsampling) for the tiny models."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * scale_levels,
        up_block_types=("UpDecoderBlock2D",) * scale_levels,
        block_out_channels=(8, 16)[:scale_levels], layers_per_block=1, norm_num_groups=8, sample_size=32,
    ).eval()


def preset_vae():
    """4 levels = the published 8x spatial downsampling, tiny widths."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                         layers_per_block=1, norm_num_groups=8, sample_size=256).eval()


def ddim_scheduler():
    """Stable Diffusion's DDIM schedule (scaled-linear betas, steps offset 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def randomize_temporal_outputs(unet) -> None:
    """Tune-A-Video initialises ``attn_temp.to_out.0.weight`` to zero (a new layer starts as a no-op);
    a tuned model's is not, so random-weight models draw it like every other weight."""
    for name, module in unet.named_modules():
        if name.endswith("attn_temp"):
            torch.nn.init.kaiming_uniform_(module.to_out[0].weight, a=5 ** 0.5)  # nn.Linear's default
