"""An independent, plain-torch reference of the Tune-A-Video UNet forward pass.

Re-derived by reading showlab/Tune-A-Video ``tuneavideo/models/{unet,unet_blocks,attention,resnet}.py``
and the diffusers 0.11 pieces it builds on (``CrossAttention``, ``FeedForward`` with GEGLU,
``Timesteps``, ``TimestepEmbedding``). It works directly from a state dict with the published
Tune-A-Video key names and uses nothing but ``torch`` and ``torch.nn.functional``: it shares no
code with the implementation under test, so a test can hold that implementation's numerics to it.

Layout conventions (as in the original):

* video tensors are ``(B, C, F, H, W)``;
* "folding" frames into the batch is ``b c f h w -> (b f) c h w`` (frame index fastest);
* the resnets' GroupNorms and ``conv_norm_out`` run on the 5-D tensor, so their group
  statistics pool over all frames; every convolution runs per frame;
* ``Transformer3DModel`` folds frames first, so its GroupNorm runs per frame.

Only the inference path is modelled (no dropout, no gradient checkpointing, no attention mask,
no class embedding, no attention slicing/xformers: those change nothing numerically or are unused).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Fixed constants of the original code.
TRANSFORMER_GROUPNORM_EPS = 1e-6  # attention.py:58
LAYERNORM_EPS = 1e-5  # nn.LayerNorm default (attention.py:167,184,190,202)


# --------------------------------------------------------------------------------------------
# small tensor helpers
# --------------------------------------------------------------------------------------------


def _fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frame index fastest: 'b c f h w -> (b f) c h w'."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _unfold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W): '(b f) c h w -> b c f h w'."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _group_norm_5d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """nn.GroupNorm applied to the whole (B, C, F, H, W) tensor: statistics pool over C/G x F x H x W."""
    return F.group_norm(x, groups, weight, bias, eps)


def _group_norm_per_frame(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """nn.GroupNorm on a (N, C, H, W) tensor (frames already folded into N)."""
    return F.group_norm(x, groups, weight, bias, eps)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, LAYERNORM_EPS)


def _conv_per_frame(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """InflatedConv3d (resnet.py:10-18): a Conv2d run on every frame; (B, C, F, H, W) in and out."""
    frames = x.shape[2]
    y = F.conv2d(_fold_frames(x), weight, bias, stride=stride, padding=padding)
    return _unfold_frames(y, frames)


# --------------------------------------------------------------------------------------------
# time embedding (diffusers 0.11 Timesteps + TimestepEmbedding)
# --------------------------------------------------------------------------------------------


def _sinusoidal_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """diffusers get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift=shift)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half - shift)
    freqs = torch.exp(exponent)
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def _time_embedding(state: dict, t_emb: torch.Tensor) -> torch.Tensor:
    """TimestepEmbedding: linear_1 -> SiLU -> linear_2."""
    h = _linear(t_emb, state["time_embedding.linear_1.weight"], state["time_embedding.linear_1.bias"])
    h = F.silu(h)
    return _linear(h, state["time_embedding.linear_2.weight"], state["time_embedding.linear_2.bias"])


# --------------------------------------------------------------------------------------------
# attention (diffusers 0.11 CrossAttention and Tune-A-Video's SparseCausalAttention)
# --------------------------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, heads*d) -> (N*heads, L, d) (CrossAttention.reshape_heads_to_batch_dim)."""
    n, length, dim = x.shape
    return x.reshape(n, length, heads, dim // heads).permute(0, 2, 1, 3).reshape(n * heads, length, dim // heads)


def _merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N*heads, L, d) -> (N, L, heads*d) (CrossAttention.reshape_batch_dim_to_heads)."""
    nh, length, d = x.shape
    return x.reshape(nh // heads, heads, length, d).permute(0, 2, 1, 3).reshape(nh // heads, length, heads * d)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, upcast: bool = False) -> torch.Tensor:
    """softmax(Q K^T * dim_head**-0.5) V on projected (N, L, heads*d) tensors; returns (N, Lq, heads*d).

    Mirrors CrossAttention._attention: scores in the query dtype (float32 when ``upcast``),
    softmax, probabilities cast back to the value dtype, then @ V.
    """
    dim_head = query.shape[-1] // heads
    scale = dim_head**-0.5
    q = _split_heads(query, heads)
    k = _split_heads(key, heads)
    v = _split_heads(value, heads)
    if upcast:
        q = q.float()
        k = k.float()
    scores = scale * torch.bmm(q, k.transpose(1, 2))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return _merge_heads(torch.bmm(probs, v), heads)


def _qkv_bias(state: dict, name: str) -> torch.Tensor | None:
    # attention_bias defaults to False (attention.py:42), so the published weights have no
    # q/k/v biases; read one only if a state dict happens to carry it.
    return state.get(name)


def _cross_attention(x: torch.Tensor, context: torch.Tensor, state: dict, prefix: str, heads: int, upcast: bool) -> torch.Tensor:
    """diffusers CrossAttention.forward: q from x, k/v from context (x itself for self-attention)."""
    q = _linear(x, state[f"{prefix}.to_q.weight"], _qkv_bias(state, f"{prefix}.to_q.bias"))
    k = _linear(context, state[f"{prefix}.to_k.weight"], _qkv_bias(state, f"{prefix}.to_k.bias"))
    v = _linear(context, state[f"{prefix}.to_v.weight"], _qkv_bias(state, f"{prefix}.to_v.bias"))
    out = _attention(q, k, v, heads, upcast)
    return _linear(out, state[f"{prefix}.to_out.0.weight"], state[f"{prefix}.to_out.0.bias"])


def _sparse_causal_attention(x: torch.Tensor, frames: int, state: dict, prefix: str, heads: int, upcast: bool) -> torch.Tensor:
    """SparseCausalAttention.forward (attention.py:272-328) on x of shape (B*F, N, C).

    The query of frame i attends to the keys/values of [frame 0 ; frame max(i-1, 0)],
    concatenated along the token axis.
    """
    q = _linear(x, state[f"{prefix}.to_q.weight"], _qkv_bias(state, f"{prefix}.to_q.bias"))
    k = _linear(x, state[f"{prefix}.to_k.weight"], _qkv_bias(state, f"{prefix}.to_k.bias"))
    v = _linear(x, state[f"{prefix}.to_v.weight"], _qkv_bias(state, f"{prefix}.to_v.bias"))

    first = [0] * frames
    former = [max(i - 1, 0) for i in range(frames)]

    def gather(t: torch.Tensor) -> torch.Tensor:
        bf, n, c = t.shape
        t = t.reshape(bf // frames, frames, n, c)  # '(b f) d c -> b f d c'
        t = torch.cat([t[:, first], t[:, former]], dim=2)  # tokens of frame 0, then of frame i-1
        return t.reshape(bf, 2 * n, c)  # 'b f d c -> (b f) d c'

    out = _attention(q, gather(k), gather(v), heads, upcast)
    return _linear(out, state[f"{prefix}.to_out.0.weight"], state[f"{prefix}.to_out.0.bias"])


def _feed_forward(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """FeedForward(activation_fn='geglu'): net.0 = GEGLU(proj to 2*inner), net.2 = Linear(inner, dim)."""
    h = _linear(x, state[f"{prefix}.net.0.proj.weight"], state[f"{prefix}.net.0.proj.bias"])
    h, gate = h.chunk(2, dim=-1)
    h = h * F.gelu(gate)  # exact (erf) gelu
    return _linear(h, state[f"{prefix}.net.2.weight"], state[f"{prefix}.net.2.bias"])


# --------------------------------------------------------------------------------------------
# transformer (Transformer3DModel + BasicTransformerBlock)
# --------------------------------------------------------------------------------------------


def _basic_transformer_block(
    x: torch.Tensor, context: torch.Tensor, frames: int, state: dict, prefix: str, heads: int, upcast: bool
) -> torch.Tensor:
    """BasicTransformerBlock.forward (attention.py:232-269); x is (B*F, N, C), context (B*F, L, D)."""
    # sparse-causal self-attention
    h = _layer_norm(x, state[f"{prefix}.norm1.weight"], state[f"{prefix}.norm1.bias"])
    x = _sparse_causal_attention(h, frames, state, f"{prefix}.attn1", heads, upcast) + x
    # cross-attention
    h = _layer_norm(x, state[f"{prefix}.norm2.weight"], state[f"{prefix}.norm2.bias"])
    x = _cross_attention(h, context, state, f"{prefix}.attn2", heads, upcast) + x
    # feed-forward
    h = _layer_norm(x, state[f"{prefix}.norm3.weight"], state[f"{prefix}.norm3.bias"])
    x = _feed_forward(h, state, f"{prefix}.ff") + x
    # temporal attention: '(b f) d c -> (b d) f c', self-attention over frames, back
    bf, n, c = x.shape
    b = bf // frames
    x = x.reshape(b, frames, n, c).permute(0, 2, 1, 3).reshape(b * n, frames, c)
    h = _layer_norm(x, state[f"{prefix}.norm_temp.weight"], state[f"{prefix}.norm_temp.bias"])
    x = _cross_attention(h, h, state, f"{prefix}.attn_temp", heads, upcast) + x
    x = x.reshape(b, n, frames, c).permute(0, 2, 1, 3).reshape(bf, n, c)
    return x


def _transformer3d(
    x: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    state: dict,
    prefix: str,
    heads: int,
    groups: int,
    use_linear_projection: bool,
    upcast: bool,
) -> torch.Tensor:
    """Transformer3DModel.forward (attention.py:89-136): (B, C, F, H, W) -> (B, C, F, H, W)."""
    frames = x.shape[2]
    x = _fold_frames(x)
    # 'b n c -> (b f) n c': every frame of a batch element sees that element's text tokens
    context = encoder_hidden_states.repeat_interleave(frames, dim=0)

    n, c, h, w = x.shape
    residual = x
    y = _group_norm_per_frame(x, state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"], groups, TRANSFORMER_GROUPNORM_EPS)
    if not use_linear_projection:
        y = F.conv2d(y, state[f"{prefix}.proj_in.weight"], state[f"{prefix}.proj_in.bias"])
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(n, h * w, inner)
    else:
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(n, h * w, inner)
        y = _linear(y, state[f"{prefix}.proj_in.weight"], state[f"{prefix}.proj_in.bias"])

    # Transformer3DModel is always built with num_layers=1 (unet_blocks.py:174,260,455)
    y = _basic_transformer_block(y, context, frames, state, f"{prefix}.transformer_blocks.0", heads, upcast)

    if not use_linear_projection:
        y = y.reshape(n, h, w, inner).permute(0, 3, 1, 2)
        y = F.conv2d(y, state[f"{prefix}.proj_out.weight"], state[f"{prefix}.proj_out.bias"])
    else:
        y = _linear(y, state[f"{prefix}.proj_out.weight"], state[f"{prefix}.proj_out.bias"])
        y = y.reshape(n, h, w, inner).permute(0, 3, 1, 2)

    return _unfold_frames(y + residual, frames)


# --------------------------------------------------------------------------------------------
# resnet, down- and upsampling (resnet.py)
# --------------------------------------------------------------------------------------------


def _resnet(
    x: torch.Tensor,
    temb: torch.Tensor,
    state: dict,
    prefix: str,
    groups: int,
    eps: float,
    output_scale_factor: float = 1.0,
    time_embedding_norm: str = "default",
) -> torch.Tensor:
    """ResnetBlock3D.forward (resnet.py:174-204), SiLU nonlinearity, dropout 0."""
    h = _group_norm_5d(x, state[f"{prefix}.norm1.weight"], state[f"{prefix}.norm1.bias"], groups, eps)
    h = F.silu(h)
    h = _conv_per_frame(h, state[f"{prefix}.conv1.weight"], state[f"{prefix}.conv1.bias"], padding=1)

    t = _linear(F.silu(temb), state[f"{prefix}.time_emb_proj.weight"], state[f"{prefix}.time_emb_proj.bias"])
    t = t[:, :, None, None, None]
    if time_embedding_norm == "default":
        h = h + t

    h = _group_norm_5d(h, state[f"{prefix}.norm2.weight"], state[f"{prefix}.norm2.bias"], groups, eps)

    if time_embedding_norm == "scale_shift":
        scale, shift = torch.chunk(t, 2, dim=1)
        h = h * (1 + scale) + shift

    h = F.silu(h)
    h = _conv_per_frame(h, state[f"{prefix}.conv2.weight"], state[f"{prefix}.conv2.bias"], padding=1)

    # a 1x1 conv_shortcut exists exactly when in_channels != out_channels (resnet.py:168-172)
    if f"{prefix}.conv_shortcut.weight" in state:
        x = _conv_per_frame(x, state[f"{prefix}.conv_shortcut.weight"], state[f"{prefix}.conv_shortcut.bias"])
    return (x + h) / output_scale_factor


def _downsample(x: torch.Tensor, state: dict, prefix: str, padding: int) -> torch.Tensor:
    """Downsample3D: per-frame 3x3 conv, stride 2 (resnet.py:76-107)."""
    if padding == 0:
        raise NotImplementedError("Downsample3D with padding 0 is not implemented in Tune-A-Video either")
    return _conv_per_frame(x, state[f"{prefix}.conv.weight"], state[f"{prefix}.conv.bias"], stride=2, padding=padding)


def _upsample(x: torch.Tensor, state: dict, prefix: str, output_size=None) -> torch.Tensor:
    """Upsample3D: nearest x2 on H and W only (frames unchanged), then a per-frame 3x3 conv."""
    if output_size is None:
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    else:
        # forced size (frames, H, W), used when the input was not a multiple of the up factor
        x = F.interpolate(x, size=tuple(output_size), mode="nearest")
    return _conv_per_frame(x, state[f"{prefix}.conv.weight"], state[f"{prefix}.conv.bias"], padding=1)


# --------------------------------------------------------------------------------------------
# the whole UNet (unet.py + unet_blocks.py)
# --------------------------------------------------------------------------------------------


def _check_supported(config: dict) -> None:
    unsupported = {
        "only_cross_attention": False,
        "dual_cross_attention": False,
        "class_embed_type": None,
        "num_class_embeds": None,
    }
    for key, ok in unsupported.items():
        value = config.get(key, ok)
        if isinstance(value, (list, tuple)):
            bad = any(v != ok for v in value)
        else:
            bad = value != ok
        if bad:
            raise NotImplementedError(f"reference_forward does not model {key}={value!r}")
    if config.get("act_fn", "silu") != "silu":
        raise NotImplementedError("reference_forward models act_fn='silu' only")
    if config.get("mid_block_type", "UNetMidBlock3DCrossAttn") != "UNetMidBlock3DCrossAttn":
        raise NotImplementedError("reference_forward models mid_block_type='UNetMidBlock3DCrossAttn' only")
    for t in config["down_block_types"]:
        if t not in ("CrossAttnDownBlock3D", "DownBlock3D"):
            raise NotImplementedError(f"unknown down block type {t!r}")
    for t in config["up_block_types"]:
        if t not in ("CrossAttnUpBlock3D", "UpBlock3D"):
            raise NotImplementedError(f"unknown up block type {t!r}")


def reference_forward(
    state: dict[str, torch.Tensor],
    config: dict,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
) -> torch.Tensor:
    """sample (B, C, F, H, W), timestep (B,) float, encoder_hidden_states (B, L, D) -> (B, C_out, F, H, W)."""
    _check_supported(config)
    block_out_channels = list(config["block_out_channels"])
    layers_per_block = int(config.get("layers_per_block", 2))
    down_block_types = list(config["down_block_types"])
    up_block_types = list(config["up_block_types"])
    groups = int(config.get("norm_num_groups", 32))
    eps = float(config.get("norm_eps", 1e-5))
    use_linear_projection = bool(config.get("use_linear_projection", False))
    upcast = bool(config.get("upcast_attention", False))
    flip_sin_to_cos = bool(config.get("flip_sin_to_cos", True))
    freq_shift = float(config.get("freq_shift", 0))
    downsample_padding = int(config.get("downsample_padding", 1))
    mid_scale = float(config.get("mid_block_scale_factor", 1.0))
    time_norm = config.get("resnet_time_scale_shift", "default")

    # attention_head_dim is, in this code base, the number of heads of each block: it is passed as
    # attn_num_head_channels -> Transformer3DModel(num_attention_heads=..., attention_head_dim=C // heads)
    # (unet.py:110-111,131,151,194; unet_blocks.py:257-259,452-454,170-172).
    heads_cfg = config.get("attention_head_dim", 8)
    if isinstance(heads_cfg, int):
        heads_cfg = [heads_cfg] * len(down_block_types)
    heads_cfg = [int(h) for h in heads_cfg]
    up_heads = list(reversed(heads_cfg))

    n_blocks = len(block_out_channels)

    # --- time (unet.py:324-345)
    if timestep.dim() == 0:
        timestep = timestep[None]
    timestep = timestep.to(sample.device).expand(sample.shape[0])
    t_emb = _sinusoidal_embedding(timestep, block_out_channels[0], flip_sin_to_cos, freq_shift)
    t_emb = t_emb.to(state["time_embedding.linear_1.weight"].dtype)
    emb = _time_embedding(state, t_emb)

    # --- center input (unet.py:320-321)
    if config.get("center_input_sample", False):
        sample = 2 * sample - 1.0

    # --- upsample size forcing (unet.py:304-312, 160-178)
    num_upsamplers = sum(1 for i in range(len(up_block_types)) if i != n_blocks - 1)
    up_factor = 2**num_upsamplers
    forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

    # --- conv_in (unet.py:358)
    h = _conv_per_frame(sample, state["conv_in.weight"], state["conv_in.bias"], padding=1)

    # --- down (unet.py:361-373, unet_blocks.py:285-318, 373-397)
    res_samples = [h]
    for i, block_type in enumerate(down_block_types):
        prefix = f"down_blocks.{i}"
        for j in range(layers_per_block):
            h = _resnet(h, emb, state, f"{prefix}.resnets.{j}", groups, eps, 1.0, time_norm)
            if block_type == "CrossAttnDownBlock3D":
                h = _transformer3d(
                    h, encoder_hidden_states, state, f"{prefix}.attentions.{j}", heads_cfg[i], groups,
                    use_linear_projection, upcast,
                )
            res_samples.append(h)
        if i != n_blocks - 1:  # add_downsample = not is_final_block (unet.py:118,126)
            h = _downsample(h, state, f"{prefix}.downsamplers.0", downsample_padding)
            res_samples.append(h)

    # --- mid (unet_blocks.py:199-205); heads = attention_head_dim[-1] (unet.py:151)
    h = _resnet(h, emb, state, "mid_block.resnets.0", groups, eps, mid_scale, time_norm)
    h = _transformer3d(
        h, encoder_hidden_states, state, "mid_block.attentions.0", heads_cfg[-1], groups, use_linear_projection, upcast
    )
    h = _resnet(h, emb, state, "mid_block.resnets.1", groups, eps, mid_scale, time_norm)

    # --- up (unet.py:381-404, unet_blocks.py:474-514, 565-588)
    upsample_size = None
    num_up_resnets = layers_per_block + 1  # unet.py:184
    for i, block_type in enumerate(up_block_types):
        prefix = f"up_blocks.{i}"
        is_final_block = i == len(up_block_types) - 1
        block_res = res_samples[-num_up_resnets:]
        res_samples = res_samples[:-num_up_resnets]
        if not is_final_block and forward_upsample_size:
            upsample_size = res_samples[-1].shape[2:]  # (F, H, W) of the next skip
        for j in range(num_up_resnets):
            skip = block_res[-1]  # pop the most recent skip first
            block_res = block_res[:-1]
            h = torch.cat([h, skip], dim=1)
            h = _resnet(h, emb, state, f"{prefix}.resnets.{j}", groups, eps, 1.0, time_norm)
            if block_type == "CrossAttnUpBlock3D":
                h = _transformer3d(
                    h, encoder_hidden_states, state, f"{prefix}.attentions.{j}", up_heads[i], groups,
                    use_linear_projection, upcast,
                )
        if i != n_blocks - 1:  # add_upsample = not is_final_block (unet.py:169,176-180)
            h = _upsample(h, state, f"{prefix}.upsamplers.0", upsample_size)

    # --- out (unet.py:406-408)
    h = _group_norm_5d(h, state["conv_norm_out.weight"], state["conv_norm_out.bias"], groups, eps)
    h = F.silu(h)
    return _conv_per_frame(h, state["conv_out.weight"], state["conv_out.bias"], padding=1)
