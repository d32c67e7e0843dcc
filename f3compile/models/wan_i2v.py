"""Wan image-to-video (`WanImageToVideoPipeline`): Wan2.1-I2V (CLIP image tokens), Wan2.2-I2V-A14B
and Wan2.2-TI2V-5B (also as text-to-video through `WanPipeline`).

The transformer is Wan's (`wan`), with additions that carry the conditioning image:

- **channels**: the sample is the noise latents (16 channels) followed by the condition latents, 4
  frame-mask channels (1 on the first video frame, packed 4 per latent frame) and the image's VAE
  latents (the image followed by zeros, encoded and normalised as the VAE's latents are): 36 channels
  in, 16 out. The condition is the same at every step; the sampling loop appends it to the latents
  (`sampling.guided_step`'s `condition`).
- **image tokens** (Wan 2.1 only, `image_dim`): CLIP's penultimate hidden states (257 tokens of 1280),
  projected by the transformer's image embedder and seen by every cross-attention through its added
  key/value projections. f3compile's programs keep one context input: the image states go *before*
  the text states in it, zero-padded to one width (`pack_context`), and `denoise` splits them again.
- **the first frame** (Wan2.2 TI2V, `expand_timesteps`): 48 latent channels in and out; the image's
  VAE latents take the place of the first latent frame in every call and in the result
  (`FirstFrame`), and every video token gets its own timestep, 0 on that frame
  (`denoise_per_token`, built inside the program from the step's scalar; all t without an image).

The condition and the image states are computed by diffusers' own `WanImageToVideoPipeline` methods
(`video_processor.preprocess`, `prepare_latents`, `encode_image`) on the pipeline's VAE, image
processor and image encoder, in the model and in a build's runtime alike, so a build reproduces the
pipeline. First-last-frame models (`pos_embed_seq_len`) are refused (`wan.refuse_unsupported`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import wan

PIPELINE_CLASS = "WanImageToVideoPipeline"


@dataclass
class FirstFrame:
    """An image's latents (B, C, 1, h, w) that take the place of the first latent frame in every call
    of the loop and in its result (Wan2.2 TI2V), as `WanImageToVideoPipeline` blends them in; a plain
    tensor `condition` is appended to the latents' channels instead."""

    latents: torch.Tensor

    def to(self, *args, **kwargs) -> "FirstFrame":
        return FirstFrame(self.latents.to(*args, **kwargs))

    def __getitem__(self, rows) -> "FirstFrame":
        return FirstFrame(self.latents[rows])

    def blend(self, latents: torch.Tensor) -> torch.Tensor:
        """`latents` with the first frame replaced (batch rows repeated, as for the CFG batch)."""
        first = self.latents.to(latents.device, latents.dtype)
        out = latents.clone()
        out[:, :, :1] = first.repeat(latents.shape[0] // first.shape[0], 1, 1, 1, 1)
        return out


@dataclass(frozen=True)
class ImageConditioning:
    """What an image-to-video model takes besides the prompt and the noise."""

    channels: int  # condition latent channels appended to the noise latents
    tokens: int = 0  # image-encoder states packed before the text states (0: none)
    width: int = 0  # their width
    first_frame: bool = False  # Wan2.2 TI2V: the image's latents replace the first latent frame instead
    family: str = "wan"  # whose pipeline encodes the image and packs its states (`encode`, `pack`)

    def to_dict(self) -> dict:
        return {"kind": "image", "channels": self.channels, "tokens": self.tokens, "width": self.width,
                **({"first_frame": True} if self.first_frame else {}),
                **({"family": self.family} if self.family != "wan" else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "ImageConditioning":
        return cls(int(data["channels"]), int(data.get("tokens", 0)), int(data.get("width", 0)),
                   bool(data.get("first_frame", False)), str(data.get("family", "wan")))

    def encode(self, images: list, frames: int, height: int, width: int, components: dict, device="cpu"):
        """(condition, image states or None) of one image per video, by the family's pipeline methods
        on the pipeline's `components` (vae, image_encoder, image_processor or feature_extractor)."""
        if self.family == "hunyuanvideo15":
            from .hunyuan15 import encode_images as encode_hunyuan

            return encode_hunyuan(images, frames, height, width, vae=components["vae"],
                                  image_encoder=components.get("image_encoder"),
                                  feature_extractor=components.get("feature_extractor"), device=device)
        return encode_images(images, frames, height, width, self, vae=components["vae"],
                             image_processor=components.get("image_processor"),
                             image_encoder=components.get("image_encoder"), device=device)

    def pack(self, context: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        """The context with the image states packed in, as the family's denoise takes them apart."""
        if states is None:
            return context
        if self.family == "hunyuanvideo15":
            from .hunyuan15 import pack_image

            return pack_image(context, states)
        return pack_context(context, states, self)


def conditioning_of(transformer_config, image_encoder, expand_timesteps: bool = False) -> ImageConditioning:
    """The conditioning a Wan I2V transformer (`config`) takes, with the pipeline's image encoder
    (`expand_timesteps`: Wan2.2 TI2V, the image's latents in place of the first latent frame)."""
    if expand_timesteps:
        return ImageConditioning(0, first_frame=True)
    get = transformer_config.get if isinstance(transformer_config, dict) else transformer_config.__getitem__
    channels = int(get("in_channels")) - int(get("out_channels"))
    tokens = width = 0
    if get("image_dim") is not None:
        width = int(get("image_dim"))
        if image_encoder is not None:
            config = image_encoder.config
            tokens = (int(config.image_size) // int(config.patch_size)) ** 2 + 1  # patches and the class token
    return ImageConditioning(channels, tokens, width)


def pack_context(text: torch.Tensor, image: torch.Tensor | None, conditioning: ImageConditioning) -> torch.Tensor:
    """(B, tokens + L, max(D, width)): the image states, then the text states, each zero-padded to
    the wider of the two (`denoise` takes them apart)."""
    if not conditioning.tokens:
        return text
    width = max(text.shape[-1], conditioning.width)
    image = image.to(text.dtype)
    pad = torch.nn.functional.pad
    return torch.cat([pad(image, (0, width - image.shape[-1])), pad(text, (0, width - text.shape[-1]))], dim=1)


def denoise(denoiser, sample, timestep, encoder_hidden_states, *, tokens: int = 0, width: int = 0, text_dim: int = 0):
    """`wan.denoise` with the packed context split into CLIP states (`tokens` × `width`) and text."""
    t = wan.timesteps(timestep, sample)
    image = None
    if tokens:
        image = encoder_hidden_states[:, :tokens, :width]
        encoder_hidden_states = encoder_hidden_states[:, tokens:, :text_dim]
    return denoiser(hidden_states=sample, timestep=t, encoder_hidden_states=encoder_hidden_states,
                    encoder_hidden_states_image=image, return_dict=False)[0]


def denoise_per_token(denoiser, sample, timestep, encoder_hidden_states, *, first_frame: bool = False):
    """Wan2.2 TI2V (`expand_timesteps`): one timestep per video token, as `WanPipeline` and
    `WanImageToVideoPipeline` give it (the step's t, and 0 on the first latent frame's tokens when
    that frame is the conditioning image's); built inside the program from the step's scalar."""
    p_t, p_h, p_w = denoiser.config.patch_size
    frames, height, width = sample.shape[2] // p_t, sample.shape[3] // p_h, sample.shape[4] // p_w
    t = wan.timesteps(timestep, sample)
    mask = torch.ones(frames, height, width, dtype=torch.float32, device=sample.device)
    if first_frame:
        mask[0] = 0
    per_token = mask.flatten().unsqueeze(0) * t.unsqueeze(1)  # (B, tokens)
    return denoiser(hidden_states=sample, timestep=per_token, encoder_hidden_states=encoder_hidden_states,
                    return_dict=False)[0]


def _shell(vae, image_processor=None, image_encoder=None, scheduler=None):
    """A `WanImageToVideoPipeline` holding only what encodes an image, to call its own methods."""
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                   image_processor=image_processor, image_encoder=image_encoder)


def load_images(images) -> list:
    """PIL images from paths, as diffusers' `load_image` reads them (EXIF orientation, RGB); what
    is already an image is kept as it is."""
    from diffusers.utils import load_image

    from ..errors import F3Error

    loaded = []
    for path in images:
        if not (isinstance(path, (str, bytes)) or hasattr(path, "__fspath__")):
            loaded.append(path)
            continue
        try:
            loaded.append(load_image(str(path)))
        except Exception as exc:  # missing, unreadable or not an image
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise F3Error(f"image {path} could not be read ({reason}); pass a PNG or JPEG file") from None
    return loaded


@torch.no_grad()
def encode_images(images: list, frames: int, height: int, width: int, conditioning: ImageConditioning, *, vae,
                  image_processor=None, image_encoder=None, device="cpu", dtype=torch.float32,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(condition (B, channels, F, h, w) fp32, image states (B, tokens, width) or None) of one image
    per video, exactly as `WanImageToVideoPipeline.__call__` computes them: the image resized to the
    video, followed by zero frames, VAE-encoded (the distribution's mode) and normalised, after the
    first-frame mask; CLIP's penultimate hidden states (computed in `dtype` on `device`)."""
    shell = _shell(vae, image_processor, image_encoder)
    if conditioning.first_frame:
        shell.register_to_config(expand_timesteps=True)
    conditions, states = [], []
    for image in images:
        pixels = shell.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        latent_channels = int(vae.config.z_dim)
        latent_frames = (frames - 1) // shell.vae_scale_factor_temporal + 1
        zeros = torch.zeros(1, latent_channels, latent_frames, height // shell.vae_scale_factor_spatial,
                            width // shell.vae_scale_factor_spatial, device=device)
        prepared = shell.prepare_latents(pixels, 1, latent_channels, height, width, frames, torch.float32, device, None,
                                         zeros)
        conditions.append(prepared[1].float())  # TI2V: (1, z, 1, h, w), the image's latents alone
        if conditioning.tokens:
            if image_encoder is None:
                from ..errors import F3Error

                raise F3Error("this model takes CLIP image tokens but the pipeline has no image_encoder")
            states.append(shell.encode_image(image, device).float())
    condition = torch.cat(conditions)
    return (FirstFrame(condition) if conditioning.first_frame else condition), (torch.cat(states) if states else None)


def _vision(width: int = 32, image_size: int = 32, patch: int = 8):
    """(CLIP image processor, CLIPVisionModel) stand-ins: (image_size / patch)² + 1 tokens of `width`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=image_size, patch_size=patch)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return processor, encoder


def _transformer(image_dim: int | None, **overrides):
    """tiny-wan's transformer in an image-to-video layout: 36 channels in, CLIP states of `image_dim`."""
    image = {} if image_dim is None else dict(image_dim=image_dim, added_kv_proj_dim=48)  # the inner width, as published
    return wan.tiny_transformer(**{"in_channels": 36, **image, **overrides})


def build_tiny_wan_i2v():
    """Wan2.1-I2V on tiny-wan's sizes: 36 input channels and a small CLIP vision encoder (17 tokens of 32)."""
    from diffusers import WanImageToVideoPipeline

    processor, encoder = _vision()
    transformer = _transformer(image_dim=32)
    tokenizer, text_encoder = wan._text(32)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=wan._vae(),
                                   transformer=transformer, scheduler=wan.scheduler(), image_processor=processor,
                                   image_encoder=encoder)


def build_tiny_wan22_i2v():
    """Wan2.2-I2V-A14B's layout on tiny-wan's sizes: two 36-channel experts, no image encoder,
    `boundary_ratio` 0.9 as published."""
    from diffusers import WanImageToVideoPipeline

    high, low = _transformer(None), _transformer(None)
    tokenizer, text_encoder = wan._text(32)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=wan._vae(), transformer=high,
                                   transformer_2=low, scheduler=wan.scheduler(), boundary_ratio=0.9)


def _vae22(latents: int = 48):
    """A small Wan 2.2 VAE with the published strides: 4x in time, 16x in space (a 2x2 pixel patch
    before three downsamplings), `latents` channels, residual blocks."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=4, z_dim=latents, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                            patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * latents,
                            latents_std=[1.0] * latents).eval()


def build_tiny_wan22_ti2v():
    """Wan2.2-TI2V-5B's layout on tiny-wan's sizes: 48 latent channels in and out of a Wan 2.2 VAE
    (16x in space), per-token timesteps (`expand_timesteps`), the image in place of the first latent
    frame; no image encoder."""
    from diffusers import WanImageToVideoPipeline

    transformer = _transformer(None, in_channels=48, out_channels=48)
    tokenizer, text_encoder = wan._text(32)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae22(), transformer=transformer,
                                   scheduler=wan.scheduler(), expand_timesteps=True)


TI2V_5B = {"num_layers": 30, "num_attention_heads": 24, "attention_head_dim": 128, "ffn_dim": 14336}


def build_arch_wan22_ti2v(scale: float):
    """Wan2.2-TI2V-5B (Wan-Video/Wan2.2 `wan/configs/wan_ti2v_5B.py`: 30 layers, 24 heads x 128, FFN
    14336, VAE stride 4x16x16) at its published depth and head count, widths times `scale`."""
    from diffusers import WanImageToVideoPipeline

    from .presets import _width

    config = dict(TI2V_5B, attention_head_dim=_width(128, scale, 8), ffn_dim=_width(TI2V_5B["ffn_dim"], scale, 8))
    text_dim = _width(wan.TEXT_DIM, scale, 64)
    transformer = wan.arch_transformer(config, text_dim, in_channels=48, out_channels=48)
    tokenizer, text_encoder = wan._text(text_dim, layers=1)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae22(), transformer=transformer,
                                   scheduler=wan.scheduler(), expand_timesteps=True)


IMAGE_DIM = 1280  # CLIP ViT-H/14's width: Wan2.1-I2V's `image_dim`
CLIP_IMAGE = (224, 14)  # its image size and patch: 16 x 16 patches and a class token, 257 states


def build_arch_wan_i2v(scale: float, size: str = "14b"):
    """Wan2.1-I2V-14B (its 480P and 720P checkpoints share the transformer) at its published depth
    and head count, widths times `scale`; the CLIP vision encoder a two-layer stand-in of the
    published width and token count (257)."""
    from diffusers import WanImageToVideoPipeline

    from .presets import _width

    config = wan._scaled(size, scale)
    text_dim, image_dim = _width(wan.TEXT_DIM, scale, 64), _width(IMAGE_DIM, scale, 8)
    transformer = wan.arch_transformer(config, text_dim, in_channels=36, image_dim=image_dim,
                                       added_kv_proj_dim=config["num_attention_heads"] * config["attention_head_dim"])
    tokenizer, text_encoder = wan._text(text_dim, layers=1)
    processor, encoder = _vision(image_dim, *CLIP_IMAGE)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=wan._vae(),
                                   transformer=transformer, scheduler=wan.scheduler(), image_processor=processor,
                                   image_encoder=encoder)
