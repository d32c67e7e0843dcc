"""Run exported artifacts as a deployment would: manifest → text encoder → denoising loop over
stage artifacts switched by timestep → VAE decode. Depends on the manifest and the artifacts
only (no calibration, passes or exporters are imported).

On a GPU the text encoder and the VAE run there too, in the build's precision (for fp16 builds
the VAE and T5-family text encoders in fp32, as they overflow in fp16): the text encoder is moved back to the host
once the prompts are encoded, so that the denoising loop has the device to itself, and the VAE
decodes tile by tile when its untiled decode, traced on the meta device, would not fit in the
memory the device has free."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import F3Error
from ..manifest import load_manifest
from ..reuse import sequenced
from ..sampling import check_latents, denoise_loop, start_latents
from .backends import WeightPool, make_backend
from .components import load_component


def _installed(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


class Runtime:
    """A loaded build directory: `generate(prompt)` returns latents, `decode(latents)` frames."""

    def __init__(self, build_dir: str | Path, backend: str = "torch", device: str | torch.device = "cpu"):
        from ..devices import check_device

        self.device = check_device(device)
        self.build = Path(build_dir)
        self.manifest = load_manifest(self.build)  # validates and checks every artifact's sha256
        self.backend_name = backend
        self._check_versions()
        self.weights = WeightPool()  # the torch programs' weights, one copy of what stages have in common
        self.stages = [StagePrograms(backend, self.build, stage, self.device, self.weights)
                       for stage in self.manifest["stages"]]
        self._components: dict = {}
        self.tiled = False  # whether the last decode went tile by tile

    @property
    def dtype(self) -> torch.dtype:
        """The build's precision: the dtype its programs take the sample in."""
        return getattr(torch, self.manifest["stages"][0]["inputs"][0]["dtype"])

    # -- set-up ------------------------------------------------------------------------------
    def _check_versions(self) -> None:
        recorded = self.manifest["versions"]
        if self.backend_name == "tensorrt":
            built, here = recorded.get("tensorrt"), _installed("tensorrt")
            if built and here and built != here:
                raise F3Error(f"the engines were built with TensorRT {built} but {here} is installed; "
                              "rebuild them with `f3compile export --target trt`")
        for package in ("torch", "onnxruntime"):
            built, here = recorded.get(package), _installed(package)
            if built and here and built.split(".")[:2] != here.split(".")[:2]:
                print(f"warning: artifacts were built with {package} {built}, running with {here}", file=sys.stderr)

    def component(self, name: str):
        if name not in self._components:
            entry = self.manifest.get("components", {}).get(name)
            self._components[name] = None if entry is None else load_component(self.build, entry, name)
        return self._components[name]

    @property
    def scheduler(self):
        scheduler = self.component("scheduler")
        if scheduler is None:
            import diffusers

            spec = self.manifest["scheduler"]
            scheduler = getattr(diffusers, spec["class"]).from_config(spec["config"])
            self._components["scheduler"] = scheduler
        return scheduler

    # -- text --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) embeddings exactly as the source pipeline encodes them."""
        info = self.manifest["text_encoder"]
        negative = [info["negative_prompt"]] * len(prompts)
        tokenizer, encoder = self.component("tokenizer"), self.component("text_encoder")
        if (tokenizer is None or encoder is None) and "packing" in info:  # a bare HunyuanVideo 1.5 transformer
            from ..models.hunyuan15 import Packing, hashed_context

            packing = Packing(**info["packing"])
            return hashed_context(prompts, packing), hashed_context(negative, packing)
        if tokenizer is None or encoder is None:
            from ..models.components import hashed_embeddings

            return (hashed_embeddings(prompts, info["max_length"], info["hidden_size"]),
                    hashed_embeddings(negative, info["max_length"], info["hidden_size"]))
        style = info.get("style", "clip")
        if style == "hunyuan15":
            return self._encode_hunyuan15(prompts, negative)
        on_device = self.device.type == "cuda"
        if on_device:  # encoded on the device in the build's precision, then given back to the host
            # (T5-family encoders overflow in fp16: an fp16 build encodes them in fp32)
            t5 = style in ("t5", "umt5") and self.dtype == torch.float16
            encoder.to(self.device, torch.float32 if t5 else self.dtype)

        def run(texts: list[str], length: int) -> torch.Tensor:
            if style == "t5":
                texts = [t.lower().strip() for t in texts]
            if style == "umt5":  # as WanPipeline cleans prompts (html entities, whitespace)
                from diffusers.pipelines.wan.pipeline_wan import prompt_clean

                texts = [prompt_clean(t) for t in texts]
            tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                               return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
            tokens = tokens.to(self.device) if on_device else tokens
            use_mask = style in ("t5", "umt5") or getattr(encoder.config, "use_attention_mask", False)
            states = encoder(tokens.input_ids, attention_mask=tokens.attention_mask if use_mask else None)[0]
            if style == "umt5":  # each prompt's states trimmed to its length and zero-padded back
                states = states * tokens.attention_mask.gt(0).unsqueeze(-1).to(states.dtype)
            return states

        try:
            cond = run(prompts, info["max_length"])
            uncond = run(negative, cond.shape[1])
        finally:
            if on_device:
                encoder.to("cpu")
        return cond.float().cpu(), uncond.float().cpu()

    def _encode_hunyuan15(self, prompts: list[str], negative: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """HunyuanVideo 1.5's packed context, by `HunyuanVideo15Pipeline`'s own encoding methods (on the
        device in the build's precision where there is one, then back to the host)."""
        from ..models.hunyuan15 import encode_texts

        encoders = [self.component(name) for name in ("text_encoder", "text_encoder_2")]
        on_device = self.device.type == "cuda"
        device = self.device if on_device else torch.device("cpu")
        try:
            if on_device:  # ByT5 is a T5: an fp16 build encodes it in fp32, as the other T5-family encoders
                encoders[0].to(self.device, self.dtype)
                encoders[1].to(self.device, torch.float32 if self.dtype == torch.float16 else self.dtype)
            parts = (self.component("tokenizer"), encoders[0], self.component("tokenizer_2"), encoders[1])
            width = int(self.manifest["text_encoder"]["hidden_size"]) - 1
            return encode_texts(*parts, prompts, device, width), encode_texts(*parts, negative, device, width)
        finally:
            if on_device:
                for encoder in encoders:
                    encoder.to("cpu")

    # -- sampling ----------------------------------------------------------------------------
    def stage_index(self, timestep: int) -> int:
        """As `Plan.stage_for`: a timestep above every range (t = 1000 of a flow-matching sampler) is the first stage's."""
        timestep = min(int(timestep), max(stage["timesteps"][0] for stage in self.manifest["stages"]))
        for index, stage in enumerate(self.manifest["stages"]):
            high, low = stage["timesteps"]
            if low <= timestep <= high:
                return index
        raise F3Error(f"timestep {timestep} is outside every stage of {self.build}")

    def sequencer(self):
        """A fresh `denoise_for(t)` for one denoising loop: switches stages by timestep and, within a
        stage with temporal reuse, picks the program of the step and carries the residuals."""
        return sequenced(self.stage_index, [stage.periods for stage in self.stages],
                         [{reused: backend.run for reused, backend in stage.programs.items()} for stage in self.stages])

    @property
    def residual_bytes(self) -> int:
        """Device memory the carried residuals take at most (one stage's are held at a time)."""
        return max((stage.get("reuse", {}).get("residual_bytes", 0) for stage in self.manifest["stages"]), default=0)

    @property
    def conditioning(self):
        """What an image-to-video build takes besides the prompt (`wan_i2v.ImageConditioning`), or None."""
        from ..models.wan_i2v import ImageConditioning

        data = self.manifest.get("conditioning")
        return None if data is None else ImageConditioning.from_dict(data)

    @torch.no_grad()
    def encode_images(self, images: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(condition latents, image states) of one image (path or PIL) per prompt, with the build's
        own VAE, image processor and image encoder, as the source pipeline computes them."""
        from ..models.wan_i2v import load_images

        shapes = self.manifest["shapes"]
        components = {name: self.component(name) for name in ("vae", "image_encoder", "image_processor",
                                                               "feature_extractor")}
        return self.conditioning.encode(load_images(images), shapes["frames"], shapes["height"], shapes["width"],
                                        components)

    def generate(self, prompt: str | list[str], seed: int = 0, steps: int = 25, guidance_scale: float = 7.5,
                 eta: float = 0.0, latents: torch.Tensor | None = None, progress: bool = False,
                 image=None) -> torch.Tensor:
        """Final latents (B, C, F, h, w) for `prompt` (one prompt per batch row of the artifacts).

        `latents`: start from these (batch 1 or one row per prompt; e.g. DDIM-inverted latents of
        a video to edit) instead of noise drawn from `seed`. `progress`: a bar of the steps on stderr.
        `image` (a path or PIL image, or one per prompt): what an image-to-video build starts from."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        conditioning = self.conditioning
        images = None
        if image is not None:
            images = list(image) if isinstance(image, (list, tuple)) else [image] * len(prompts)
        elif conditioning is not None and all(getattr(p, "image", None) is not None for p in prompts):
            images = [p.image for p in prompts]  # `Prompt`s carry their images
        if conditioning is None and images is not None:
            raise F3Error(f"{self.build} is a text-to-video build and takes no image; drop --image")
        if conditioning is not None and images is None:
            raise F3Error(f"{self.build} is an image-to-video build: pass the image the video starts from (--image PATH)")
        if images is not None and len(images) != len(prompts):
            raise F3Error(f"got {len(images)} images for {len(prompts)} prompts; pass one image, or one per prompt")
        batch = self.manifest["shapes"]["batch"]
        dynamic = self.manifest.get("dynamic_batch")  # over the CFG batch: two rows per prompt
        if dynamic and not dynamic[0] <= 2 * len(prompts) <= dynamic[2]:
            raise F3Error(f"these artifacts take a CFG batch of {dynamic[0]} to {dynamic[2]} rows (--dynamic-batch), "
                          f"i.e. {-(-dynamic[0] // 2)} to {dynamic[2] // 2} prompt(s) per call; got {len(prompts)}")
        if len(prompts) != batch and "dynamic_batch" not in self.manifest:
            raise F3Error(f"these artifacts take {batch} prompt(s) per call, got {len(prompts)}; "
                          "export with --batch or --dynamic-batch for other counts")
        if guidance_scale <= 1.0:
            raise F3Error("--guidance-scale must be > 1: the artifacts take the CFG-doubled batch")
        shape = list(self.manifest["stages"][0]["inputs"][0]["shape"])
        shape[0] = len(prompts)
        condition = None
        if conditioning is not None:  # the programs' sample holds the condition after the latents
            shape[1] -= conditioning.channels
        if latents is not None:
            check_latents(latents, tuple(shape))
        cond, uncond = self.encode(prompts)
        if conditioning is not None:
            condition, states = self.encode_images(images)
            cond, uncond = conditioning.pack(cond, states), conditioning.pack(uncond, states)
            condition = condition.to(self.device)
        generator = torch.Generator().manual_seed(seed)
        # the noise is drawn on the CPU (the same video on every device), the loop runs on the device
        layout = self.manifest.get("native_layout", "B,C,F,H,W")
        start = start_latents(latents, tuple(shape), self.scheduler, generator, layout).to(self.device)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc="generate", unit="step", leave=False)
        try:
            final = denoise_loop(None, self.scheduler, start, cond.to(self.device), uncond.to(self.device), steps,
                                 guidance_scale, generator, eta=eta, denoise_for=self.sequencer(), layout=layout,
                                 condition=condition, family=self.manifest["model"].get("family"),
                                 on_step=None if bar is None else (lambda index, t: bar.update(1 if index else 0)))
            if bar is not None:
                bar.update(bar.total - bar.n)  # the last step ends after its call
        finally:
            if bar is not None:
                bar.close()
        return final.cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W, 3) frames in [0, 1] decoded frame by frame with the VAE."""
        vae = self.component("vae")
        decoder = self.manifest.get("decoder", {})
        if vae is None and decoder.get("kind") == "pixel_shuffle":  # pixel-space model: unpack, no VAE
            from ..models.reference.models import unpack

            return unpack(latents, int(decoder["factor"]))
        if vae is None:
            raise F3Error(f"{self.build} carries no VAE (a bare denoiser); write latents with --save-latents instead")
        if self.device.type != "cuda":
            return vae_decode(vae, latents)
        dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        vae.to(self.device, dtype)
        try:
            self.tiled = self._tile(vae, latents)
            return vae_decode(vae, latents.to(self.device, dtype)).cpu()
        finally:
            vae.to("cpu")
            if hasattr(vae, "disable_tiling"):
                vae.disable_tiling()

    def _tile(self, vae, latents: torch.Tensor) -> bool:
        """Turn on the VAE's tiling when its untiled decode (traced on the meta device) would not
        fit in the device's free memory; whether it did."""
        if not hasattr(vae, "enable_tiling"):
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        if decode_bytes(vae, tuple(latents.shape)) <= 0.9 * free:
            return False
        vae.enable_tiling()
        return True


class StagePrograms:
    """One manifest stage on a backend: the program computing every block, keyed (), and with
    temporal reuse one program per tuple of reused blocks."""

    def __init__(self, backend: str, build: Path, stage: dict, device: torch.device, pool: WeightPool | None = None):
        reuse = stage.get("reuse", {})
        self.periods: dict[str, int] = dict(reuse.get("periods", {}))
        self.programs = {(): make_backend(backend, build, stage, device, pool=pool)}
        for number, program in enumerate(reuse.get("programs", []), 1):
            self.programs[tuple(program["reused"])] = make_backend(backend, build, program, device, pool=pool,
                                                                   label=f"stage{stage['index']} reuse{number}")


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) latents → (B, F, H, W, 3) frames in [0, 1], decoded frame by frame (a video VAE,
    Wan's: as one video, which also restores the frames its time compression folded)."""
    if type(vae).__name__ == "AutoencoderKLWan":
        from ..models.wan import decode

        return decode(vae, latents)
    if type(vae).__name__ == "AutoencoderKLCogVideoX":
        from ..models.cogvideox import decode

        return decode(vae, latents)
    if type(vae).__name__ == "AutoencoderKLHunyuanVideo15":
        from ..models.hunyuan15 import decode

        return decode(vae, latents)
    batch, channels, frames, height, width = latents.shape
    flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    images = vae.decode(flat).sample  # (B*F, 3, H, W) in [-1, 1]
    video = images.reshape(batch, frames, *images.shape[1:]).permute(0, 1, 3, 4, 2)
    return (video.float() / 2 + 0.5).clamp(0, 1)


def save_video(frames: torch.Tensor, path: Path, fps: int = 8) -> None:
    """Write (F, H, W, 3) frames in [0, 1] as .gif, .mp4 or .png (frames side by side)."""
    import numpy as np

    array = (frames.numpy() * 255).round().astype(np.uint8)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        import imageio.v2 as imageio

        imageio.mimsave(str(path), list(array), duration=1000 / fps, loop=0)
    elif suffix == ".png":
        import imageio.v2 as imageio

        imageio.imwrite(str(path), np.concatenate(list(array), axis=1))
    elif suffix == ".mp4":
        try:
            import imageio.v2 as imageio

            imageio.mimsave(str(path), list(array), fps=fps, macro_block_size=1)
        except Exception as exc:
            raise F3Error(f"writing {path.name} needs imageio-ffmpeg ({exc}); use .gif or .png") from None
    else:
        raise F3Error(f"{path.name}: the output must end in .gif, .mp4 or .png")


def decode_bytes(vae: torch.nn.Module, latent_shape: tuple[int, ...], tiled: bool = False) -> int:
    """Transient bytes of `vae` decoding latents of `latent_shape` untiled (`tiled`: with its own
    tiling), traced on a meta-device copy of it (its weights in their dtype, nothing computed; `vae`
    itself is left as it is)."""
    from ..tracing import meta_copy, traced_peak

    first = next(vae.parameters())
    meta = vae if first.is_meta else meta_copy(vae)
    latents = torch.zeros(latent_shape, device="meta", dtype=first.dtype)
    was = bool(getattr(meta, "use_tiling", False))
    if tiled:
        meta.enable_tiling()
    try:
        return traced_peak(lambda: vae_decode(meta, latents), [meta], [latents])[0]
    finally:
        if tiled and not was:
            meta.disable_tiling()
