"""HunyuanVideo 1.5 (`HunyuanVideo15Transformer3DModel` in `HunyuanVideo15Pipeline` and
`HunyuanVideo15ImageToVideoPipeline`): joint attention over the video tokens and the context tokens.

Each block `transformer_blocks.i` holds `attn`, one self-attention over every video token of every
latent frame (patch 1×1×1, flattened frame-major) together with the context tokens, which have their
own q/k/v and output projections (`add_*_proj`, `to_add_out`); rotary embeddings go on the video
tokens only. diffusers runs the video tokens first and masks padded context tokens with a (B, 1, N, N)
boolean mask built in every block. f3compile's programs run the same attention with the context
first and an additive key mask (B, 1, 1, N) built once per call (`JointProcessor`): attention over a
permuted sequence is the same attention, the mask on the keys is the mask diffusers applies to every
query that is not padding, and nothing of size N² is ever formed. So the unit's sequence is laid out
as CogVideoX's (the context first, then the frames) with a key mask on the context.

The context, one tensor (`pack`): for each prompt the ByT5 glyph-text states (256 rows; all masked
when the prompt quotes no text) and the Qwen2.5-VL states (1000 rows, the template cropped), as
`HunyuanVideo15Pipeline.encode_prompt` makes them, each row zero-padded to the wider width with its
mask in one more, last column. `denoise` takes it apart and runs the transformer's own submodules in
the order of its forward, without the forward's reordering of valid tokens (data-dependent shapes a
program cannot hold; the order of the keys does not change attention), and with the text refiner's
mask on keys only (a padded query row attends the valid keys instead of none: finite in every
backend, and never read). Text-to-video: the latents are followed by zero condition channels inside
the program, and the image tokens, all masked for text-to-video, are left out. Image-to-video: the
sampling loop appends the image's condition channels (its VAE latents on the first latent frame and a
mask channel), and the image encoder's states are packed in front of the text rows (`pack_image`),
both computed by the pipeline's own static methods (`encode_images`).

The pipeline samples with `FlowMatchEulerDiscreteScheduler` on sigmas `linspace(1, 0, n + 1)[:-1]`
(`sampling.FAMILY_SIGMAS`), the shift applied by the scheduler; classifier-free guidance by its guider
(`guidance_scale`); latents are divided by the VAE's `scaling_factor` before decoding.

The builders make the tiny test models (`builtin:tiny-hunyuanvideo1.5`, `-i2v`) and the published
architecture with random weights (`builtin:arch-hunyuanvideo1.5`, width-scalable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PIPELINE_CLASS = "HunyuanVideo15Pipeline"
I2V_PIPELINE_CLASS = "HunyuanVideo15ImageToVideoPipeline"
DENOISER_CLASS = "HunyuanVideo15Transformer3DModel"
QWEN_LENGTH, QWEN_CROP = 1000, 108  # the pipeline's tokenizer_max_length and template crop
BYT5_LENGTH = 256  # its tokenizer_2_max_length
# The published transformer (the defaults of diffusers' class, which its docstring ties to
# tencent/HunyuanVideo1.5): 54 dual-stream blocks of 16 heads x 128, MLP ratio 4, two refiner blocks,
# text 3584 (Qwen2.5-VL-7B), glyph text 1472 (ByT5-small), image 1152 (SigLIP), 32 latent channels.
PUBLISHED = dict(num_layers=54, num_attention_heads=16, attention_head_dim=128, mlp_ratio=4.0, num_refiner_layers=2,
                 text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, in_channels=65, out_channels=32,
                 rope_axes_dim=(16, 56, 56))
# the official pipeline's defaults (Tencent-Hunyuan/HunyuanVideo-1.5 `hyvideo/pipelines/hunyuan_video_pipeline.py`:
# flow_shift 7.0, guidance_scale 6.0; its 480p resolution bucket has base size 640, diffusers' `target_size`)
FLOW_SHIFT = 7.0
GUIDANCE = 6.0
TARGET_SIZE = 640


def _system_message() -> str:
    """The system prompt `HunyuanVideo15Pipeline` puts before every prompt (read from the class, not copied)."""
    import inspect

    from diffusers import HunyuanVideo15Pipeline

    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


@dataclass(frozen=True)
class Packing:
    """Where each part of the packed context lies: `image` rows of `image_width` (image-to-video:
    the image encoder's states; 0 rows for text-to-video), `byt5` rows of `byt5_width`, then `qwen` rows
    of `qwen_width`, each row `width` wide with its mask in column `width`. `length` counts the text
    rows (what prompts are encoded to); the image rows are packed in front of them (`pack_image`)."""

    byt5: int
    byt5_width: int
    qwen: int
    qwen_width: int
    image: int = 0
    image_width: int = 0

    @property
    def width(self) -> int:
        return max(self.byt5_width, self.qwen_width, self.image_width)

    @property
    def length(self) -> int:
        return self.byt5 + self.qwen

    def to_dict(self) -> dict:
        return {"byt5": self.byt5, "byt5_width": self.byt5_width, "qwen": self.qwen, "qwen_width": self.qwen_width,
                **({"image": self.image, "image_width": self.image_width} if self.image else {})}


def packing_of(config, byt5_length: int = BYT5_LENGTH, qwen_length: int = QWEN_LENGTH, image_tokens: int = 0) -> Packing:
    get = config.get if isinstance(config, dict) else config.__getitem__
    return Packing(byt5_length, int(get("text_embed_2_dim")), qwen_length, int(get("text_embed_dim")), image_tokens,
                   int(get("image_embed_dim")) if image_tokens else 0)


def calling(config, image_tokens: int = 0):
    """(denoise call, example-context masking, the packing as a dict) of a transformer with `config`:
    what a loaded model binds."""
    from functools import partial

    packing = packing_of(config, image_tokens=image_tokens)
    return partial(denoise, packing=packing), partial(example_mask, packing=packing), packing.to_dict()


def pack(qwen: torch.Tensor, qwen_mask: torch.Tensor, byt5: torch.Tensor, byt5_mask: torch.Tensor,
         width: int | None = None) -> torch.Tensor:
    """(B, 256 + 1000, width + 1): the glyph-text rows, then the Qwen rows, zero-padded to one width
    (`width`: the packing's, at least the two texts'), each with its mask (1 valid, 0 padding) in the
    last column."""
    width = max(qwen.shape[-1], byt5.shape[-1], width or 0)
    rows = []
    for states, mask in ((byt5, byt5_mask), (qwen, qwen_mask)):
        states = F.pad(states.float(), (0, width - states.shape[-1]))
        rows.append(torch.cat([states, mask.to(states).unsqueeze(-1)], dim=-1))
    return torch.cat(rows, dim=1)


def pack_image(context: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The packed text `context` (B, T, D + 1) with the image states (B, I, W) in front, each row valid."""
    width = context.shape[-1] - 1
    rows = torch.cat([F.pad(states.to(context), (0, width - states.shape[-1])),
                      torch.ones(*states.shape[:2], 1, dtype=context.dtype, device=context.device)], dim=-1)
    return torch.cat([rows, context], dim=1)


def unpack(context: torch.Tensor, packing: Packing):
    """(qwen, qwen_mask, byt5, byt5_mask, image or None, image_mask or None) of a packed context
    (masks as booleans)."""
    mask = context[..., -1] > 0.5
    start = packing.image
    byt5 = context[:, start:start + packing.byt5, :packing.byt5_width]
    qwen = context[:, start + packing.byt5:start + packing.length, :packing.qwen_width]
    image = context[:, :start, :packing.image_width] if start else None
    return (qwen, mask[:, start + packing.byt5:start + packing.length], byt5, mask[:, start:start + packing.byt5],
            image, mask[:, :start] if start else None)


def example_mask(context: torch.Tensor, packing: Packing) -> torch.Tensor:
    """`context` with its mask column as a tokenizer pads: in batch row b of B, the first
    (b + 1) / (B + 1) of the glyph rows and of the Qwen rows valid, the others padding (zeroed);
    image rows (image-to-video) all valid, zero past the image width."""
    batch = context.shape[0]
    out = context.clone()
    images = packing.image
    out[:, :images, -1] = 1.0
    out[:, :images, packing.image_width:-1] = 0.0
    for row in range(batch):
        for start, count in ((images, packing.byt5), (images + packing.byt5, packing.qwen)):
            valid = max(1, count * (row + 1) // (batch + 1))
            out[row, start:start + count, -1] = 0.0
            out[row, start:start + valid, -1] = 1.0
            out[row, start + valid:start + count, :-1] = 0.0
    return out


def key_bias(mask: torch.Tensor, video: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, T + video) additive: 0 on valid context keys and every video key, the dtype's lowest
    value on padded context keys (the context first, as `JointProcessor` lays the sequence out)."""
    lowest = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    bias = torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), lowest)
    return F.pad(bias, (0, video)).reshape(mask.shape[0], 1, 1, -1)


def joint_qkv(attn, hidden_states, context, rotary, head_dim: int, value=None):
    """q, k, v (B, H, T + N, d) of a block's joint attention, the context first: the video's
    projections (q and k normalised per head, rotary embeddings on them) and the context's own
    (`add_*_proj`, normalised where the block has norms). `value(linear, x)` computes a value
    projection (default: the whole of it; `apply` takes the kept heads' rows only)."""
    from diffusers.models.embeddings import apply_rotary_emb

    value = value or (lambda linear, x: linear(x))

    def heads(x):
        return x.unflatten(2, (-1, head_dim))

    query, key = attn.norm_q(heads(attn.to_q(hidden_states))), attn.norm_k(heads(attn.to_k(hidden_states)))
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    text_query, text_key = heads(attn.add_q_proj(context)), heads(attn.add_k_proj(context))
    if attn.norm_added_q is not None:
        text_query = attn.norm_added_q(text_query)
    if attn.norm_added_k is not None:
        text_key = attn.norm_added_k(text_key)
    values = heads(value(attn.to_v, hidden_states)), heads(value(attn.add_v_proj, context))
    return tuple(torch.cat([t, v], dim=1).transpose(1, 2)
                 for t, v in ((text_query, query), (text_key, key), values[::-1]))


class JointProcessor:
    """The blocks' attention as diffusers' `HunyuanVideo15AttnProcessor2_0` computes it for every
    non-padding query, over `cat([context, video])` with the additive key bias `attention_mask`
    (B, 1, 1, T + N) (`key_bias`); one `scaled_dot_product_attention` on (B, H, T + N, d).
    `project_context` False (the last block, whose context output nothing reads): the context's
    output is zeros instead of its projection."""

    takes_key_bias = True

    def __init__(self, project_context: bool = True):
        self.project_context = project_context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value = joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb,
                                      attn.to_q.out_features // attn.heads)
        text = encoder_hidden_states.shape[1]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        text_out, out = out[:, :text], out[:, text:]
        text_out = attn.to_add_out(text_out) if self.project_context else torch.zeros_like(encoder_hidden_states)
        return attn.to_out[1](attn.to_out[0](out)), text_out


_PROCESSOR, _LAST = JointProcessor(), JointProcessor(project_context=False)


def _refine(embedder, states: torch.Tensor, mask: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """`HunyuanVideo15TokenRefiner.forward` with its mask on keys only (a padded query row sees the
    valid keys rather than none; every valid row is the same)."""
    weights = mask.float().unsqueeze(-1)  # pooled in fp32, as diffusers pools it
    pooled = ((states.float() * weights).sum(dim=1) / weights.sum(dim=1)).to(states.dtype)
    temb = embedder.time_text_embed(timestep, pooled)
    hidden = embedder.proj_in(states)
    keys = mask.reshape(mask.shape[0], 1, 1, -1)
    for block in embedder.token_refiner.refiner_blocks:
        hidden = block(hidden, temb, keys)
    return hidden


def denoise(denoiser, sample, timestep, encoder_hidden_states, *, packing: Packing):
    """sample (B, C, F, h, w) (C: the latents, or the latents followed by an image-to-video model's
    condition channels), timestep (B,) or scalar, the packed context (B, T, D + 1) -> (B, 32, F, h, w).

    Called through the module (its `forward` this function for the call), so that what watches the
    denoiser's calls sees this one (`apply` reads the timestep there); where accelerate has wrapped
    the forward (model CPU offload, a device map), its wrapper stays and calls this function instead."""
    # accelerate's hook calls `_old_forward` between moving the inputs and the outputs
    slot = "_old_forward" if hasattr(denoiser, "_hf_hook") and hasattr(denoiser, "_old_forward") else "forward"
    previous = vars(denoiser).get(slot)

    def forward(hidden_states, timestep, encoder_hidden_states):
        return _forward(denoiser, hidden_states, timestep, encoder_hidden_states, packing)

    setattr(denoiser, slot, forward)
    try:
        return denoiser(hidden_states=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states)
    finally:
        if previous is None:
            delattr(denoiser, slot)
        else:
            setattr(denoiser, slot, previous)


def _forward(denoiser, sample, timestep, encoder_hidden_states, packing: Packing):
    config = denoiser.config
    batch, channels, frames, height, width = sample.shape
    missing = int(config.in_channels) - channels
    if missing:  # text-to-video: zero condition latents and mask
        sample = torch.cat([sample, sample.new_zeros(batch, missing, frames, height, width)], dim=1)
    t = torch.as_tensor(timestep, device=sample.device).reshape(-1).to(sample.dtype).expand(batch)
    qwen, qwen_mask, byt5, byt5_mask, image, image_mask = unpack(encoder_hidden_states.to(sample.dtype), packing)
    rotary = denoiser.rope(sample)
    temb = denoiser.time_embed(t)
    hidden = denoiser.x_embedder(sample)
    kinds = denoiser.cond_type_embed.weight
    qwen = _refine(denoiser.context_embedder, qwen, qwen_mask, t) + kinds[0]
    byt5 = denoiser.context_embedder_2(byt5) + kinds[1]
    zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
    parts = [torch.where(byt5_mask.unsqueeze(-1), byt5, zero), torch.where(qwen_mask.unsqueeze(-1), qwen, zero)]
    masks = [byt5_mask, qwen_mask]
    if image is not None:  # image-to-video: the image encoder's states, projected, in front
        parts.insert(0, denoiser.image_embedder(image) + kinds[2])
        masks.insert(0, image_mask)
    context = torch.cat(parts, dim=1)
    bias = key_bias(torch.cat(masks, dim=1), hidden.shape[1], hidden.dtype)
    from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

    from ..errors import F3Error

    blocks = denoiser.transformer_blocks
    originals = [block.attn.processor for block in blocks]
    try:
        for number, block in enumerate(blocks):  # diffusers' own processors (a plan `apply`d keeps its own)
            processor = block.attn.processor
            if isinstance(processor, HunyuanVideo15AttnProcessor2_0):
                block.attn.processor = _PROCESSOR if number < len(blocks) - 1 else _LAST
            elif not getattr(processor, "takes_key_bias", False):
                raise F3Error(f"transformer_blocks.{number}.attn runs a {type(processor).__name__}; f3compile runs "
                              "HunyuanVideo 1.5 with diffusers' own attention processor (reset it with "
                              "pipe.transformer.set_attn_processor(HunyuanVideo15AttnProcessor2_0()))")
        for block in blocks:
            hidden, context = block(hidden, context, temb, bias, rotary)
    finally:
        for block, original in zip(blocks, originals):
            block.attn.processor = original
    hidden = denoiser.proj_out(denoiser.norm_out(hidden, temb))
    p_t, p = int(config.patch_size_t), int(config.patch_size)
    hidden = hidden.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
    hidden = hidden.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, glyph_tokenizer, glyph_encoder, prompts: list[str], device,
                 width: int | None = None) -> torch.Tensor:
    """(B, 1256, width + 1) packed contexts of `prompts` (fp32, on the host; `width`: the packing's),
    each encoded exactly as
    `HunyuanVideo15Pipeline.encode_prompt` encodes it, by the pipeline's own static methods:
    Qwen2.5-VL's third-last hidden states behind its chat template (the template's first 108 tokens
    cropped), ByT5 on the glyph text the prompt quotes (all padding when it quotes none)."""
    from diffusers import HunyuanVideo15Pipeline as Pipeline

    qwen, qwen_mask = Pipeline._get_mllm_prompt_embeds(
        text_encoder=text_encoder, tokenizer=tokenizer, prompt=list(prompts), device=device,
        tokenizer_max_length=QWEN_LENGTH, system_message=_system_message(), crop_start=QWEN_CROP)
    byt5, byt5_mask = Pipeline._get_byt5_prompt_embeds(tokenizer=glyph_tokenizer, text_encoder=glyph_encoder,
                                                       prompt=list(prompts), device=device, tokenizer_max_length=BYT5_LENGTH)
    return pack(qwen, qwen_mask, byt5, byt5_mask, width).cpu()


def encode(model, prompts: list[str], negative: list[str]):
    """(cond, uncond) packed contexts of the model's pipeline (`encode_texts`)."""
    pipe = model.pipeline
    device = next(pipe.text_encoder.parameters()).device
    parts = (pipe.tokenizer, pipe.text_encoder, pipe.tokenizer_2, pipe.text_encoder_2)
    width = model.text_dim - 1
    return encode_texts(*parts, prompts, device, width), encode_texts(*parts, negative, device, width)


@torch.no_grad()
def encode_images(images: list, frames: int, height: int, width: int, *, vae, image_encoder, feature_extractor,
                  device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(condition (B, z + 1, F, h, w) fp32, image states (B, I, W) fp32) of one image per video, as
    `HunyuanVideo15ImageToVideoPipeline` computes them with its own static methods: the image resized
    and centre-cropped to the video, its VAE latents (the distribution's mode, times the scaling factor)
    on the first latent frame and zeros after, a mask channel 1 on that frame; the image encoder's
    last hidden states of the image."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline as Pipeline
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    from ..errors import F3Error

    if image_encoder is None or feature_extractor is None:
        raise F3Error("this HunyuanVideo 1.5 image-to-video model needs the pipeline's image_encoder and "
                      "feature_extractor; save the pipeline with them")
    spatial, temporal = int(vae.spatial_compression_ratio), int(vae.temporal_compression_ratio)
    processor = HunyuanVideo15ImageProcessor(vae_scale_factor=spatial, do_resize=False, do_convert_rgb=True)
    latent_frames = (frames - 1) // temporal + 1
    conditions, states = [], []
    for image in images:
        image = processor.resize(image, height=height, width=width, resize_mode="crop")
        states.append(Pipeline._get_image_embeds(image_encoder, feature_extractor, image, device).float().cpu())
        latents = Pipeline._get_image_latents(vae, processor, image, height, width, device).float().cpu()
        condition = torch.zeros(1, latents.shape[1] + 1, latent_frames, *latents.shape[-2:])
        condition[:, :-1, :1] = latents
        condition[:, -1, 0] = 1.0
        conditions.append(condition)
    return torch.cat(conditions), torch.cat(states)


def hashed_context(prompts: list[str], packing: Packing) -> torch.Tensor:
    """A bare transformer's packed context (no text encoders): each prompt's Qwen rows fixed
    pseudo-random states seeded by its sha256, every row valid; no glyph text."""
    from .components import hashed_embeddings

    count = len(prompts)
    return pack(hashed_embeddings(list(prompts), packing.qwen, packing.qwen_width), torch.ones(count, packing.qwen),
                torch.zeros(count, packing.byt5, packing.byt5_width), torch.zeros(count, packing.byt5))


def encode_hashed(model, prompts: list[str], negative: list[str]):
    packing = packing_of(model.denoiser.config)
    return hashed_context(prompts, packing), hashed_context(negative, packing)


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, 32, F, h, w) latents -> (B, frames, H, W, 3) in [0, 1], as the pipeline decodes them."""
    video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return (video.permute(0, 2, 3, 4, 1).float() / 2 + 0.5).clamp(0, 1)


def refuse_unsupported(config, where: str) -> None:
    """Refuse, in one line, the HunyuanVideo 1.5 variants this family does not run."""
    from ..errors import F3Error

    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("use_meanflow"):
        raise F3Error(f"{where} is a MeanFlow model (use_meanflow: step-distilled or super-resolution, which take a "
                      "second timestep); f3compile runs the HunyuanVideo 1.5 text- and image-to-video transformers")
    rope, head = get("rope_axes_dim"), get("attention_head_dim")
    if isinstance(rope, (list, tuple)) and isinstance(head, int) and (
            len(rope) != 3 or any(not isinstance(r, int) or r <= 0 or r % 2 for r in rope) or sum(rope) != head):
        raise F3Error(f"{where}: rope_axes_dim {list(rope)} must be three positive even sizes adding up to "
                      f"attention_head_dim {head}; fix the config or re-save the model with save_pretrained")


def scheduler(shift: float = FLOW_SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _text(width: int, glyph_width: int, layers: int = 3):
    """(tokenizer, Qwen2.5-VL text model, ByT5 tokenizer, T5 encoder) stand-ins: byte-level tokens
    with a chat template, `width` and `glyph_width` wide."""
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from .components import byte_tokenizer

    tokenizer = byte_tokenizer(QWEN_LENGTH + QWEN_CROP)
    tokenizer.chat_template = _CHAT
    heads = 2 if width < 128 else width // 128
    section = width // heads // 2  # the rotary half-width, split over (time, height, width) as mrope wants
    config = Qwen2_5_VLTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                  max_position_embeddings=2048, bos_token_id=None, eos_token_id=None,
                                  rope_scaling={"type": "mrope", "mrope_section": [section - 2 * (section // 3),
                                                                                   section // 3, section // 3]})
    encoder = Qwen2_5_VLTextModel(config).eval()
    glyph_tokenizer = ByT5Tokenizer()
    glyph_heads = 2 if glyph_width < 128 else glyph_width // 64
    glyph = T5EncoderModel(T5Config(vocab_size=len(glyph_tokenizer), d_model=glyph_width, d_kv=glyph_width // glyph_heads,
                                    num_heads=glyph_heads, d_ff=2 * glyph_width, num_layers=1)).eval()
    return tokenizer, encoder, glyph_tokenizer, glyph


def _vae(latents: int = 4):
    """A small HunyuanVideo 1.5 VAE with the published strides: 4x in time, 16x in space."""
    from diffusers import AutoencoderKLHunyuanVideo15

    return AutoencoderKLHunyuanVideo15(latent_channels=latents, block_out_channels=(8, 8, 8, 8, 8),
                                       layers_per_block=1).eval()


def _pipeline(transformer, text_width: int, glyph_width: int, latents: int, layers: int = 3, vision=None):
    """The pipeline around `transformer` with stand-in text encoders and VAE; with `vision` ((processor,
    encoder)), the image-to-video pipeline."""
    from diffusers import ClassifierFreeGuidance, HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    tokenizer, encoder, glyph_tokenizer, glyph = _text(text_width, glyph_width, layers)
    parts = dict(text_encoder=encoder, tokenizer=tokenizer, transformer=transformer, vae=_vae(latents),
                 scheduler=scheduler(), text_encoder_2=glyph, tokenizer_2=glyph_tokenizer,
                 guider=ClassifierFreeGuidance(guidance_scale=GUIDANCE))
    if vision is None:
        return HunyuanVideo15Pipeline(**parts)
    processor, image_encoder = vision
    return HunyuanVideo15ImageToVideoPipeline(**parts, image_encoder=image_encoder, feature_extractor=processor)


def _tiny_transformer(task_type: str):
    """2 blocks of 4 heads x 16, one refiner block, 4 latent channels, text 32 wide, glyph text 24,
    image states 16."""
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=4, attention_head_dim=16, num_layers=2, num_refiner_layers=1,
        mlp_ratio=2.0, text_embed_dim=32, text_embed_2_dim=24, image_embed_dim=16, rope_axes_dim=(4, 6, 6),
        target_size=64, task_type=task_type).eval()


def build_tiny_hunyuan15():
    """HunyuanVideo 1.5 text-to-video on tiny sizes (`_tiny_transformer`)."""
    return _pipeline(_tiny_transformer("t2v"), 32, 24, 4)


def _vision(width: int, image_size: int, patch: int):
    """(SigLIP image processor, SigLIP vision model) stand-ins: (image_size / patch)² states of `width`."""
    import transformers
    from transformers import SiglipVisionConfig, SiglipVisionModel

    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                                   num_attention_heads=2, image_size=image_size, patch_size=patch)).eval()
    # the PIL processor where transformers has it: the default one wants torchvision, and says so
    processor = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return processor(size={"height": image_size, "width": image_size}), encoder


def build_tiny_hunyuan15_i2v():
    """HunyuanVideo 1.5 image-to-video on tiny-hunyuanvideo1.5's sizes: the image's latents and a mask
    on channels (4 + 4 + 1 in), 16 SigLIP-style image states of 16 in front of the text."""
    return _pipeline(_tiny_transformer("i2v"), 32, 24, 4, vision=_vision(16, 32, 8))


def build_arch_hunyuan15(scale: float):
    """HunyuanVideo 1.5 (8.3 B) at its published depth and head count, widths times `scale`; the text
    encoders one-layer stand-ins of the published widths."""
    from diffusers import HunyuanVideo15Transformer3DModel

    from .presets import _width

    head_dim = _width(PUBLISHED["attention_head_dim"], scale, 8)
    first, second = 2 * (head_dim // 16), 2 * (head_dim * 7 // 32)
    rope = (first, second, head_dim - first - second)  # 16:56:56 as published, every part even
    text, glyph, image = (_width(PUBLISHED[k], scale, 8) for k in ("text_embed_dim", "text_embed_2_dim", "image_embed_dim"))
    transformer = HunyuanVideo15Transformer3DModel(**{
        **PUBLISHED, "attention_head_dim": head_dim, "rope_axes_dim": rope, "text_embed_dim": text,
        "text_embed_2_dim": glyph, "image_embed_dim": image, "target_size": TARGET_SIZE, "task_type": "t2v"}).eval()
    return _pipeline(transformer, text, glyph, 32, layers=3)
