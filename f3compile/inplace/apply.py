"""`apply`: a plan run inside the user's own pipeline object, by rewriting its modules in place.

What the compiled build does with graph passes, this does on the live modules, with the same
definitions (`windows` for the head regrouping and the window kernels, `reuse` for which step
computes and which reuses a block, the plan's `stage_for` for the stage of a timestep):
- the stage is the one holding the timestep the pipeline passes to the denoiser (read by a forward
  pre-hook on each denoiser), so a plan calibrated at 50 steps applies to a 30-step call; when the
  stage changes, the heads of each unit are regrouped for it by permuting the rows of its q/k/v
  projections (and of norms over all heads) and the columns of its output projection, in place;
- units with windows, pruned heads, kept frames or a dropped attention get a processor
  (`processors`) that runs exactly that;
- dropped and reused blocks get a forward that does not run them: a dropped block returns its input,
  a reused block its input plus the residual (output − input) of its last computed step, which the
  computing steps store. Residuals are kept per branch of classifier-free guidance where the
  pipeline runs the branches as separate calls in diffusers' `cache_context("cond"/"uncond")`, and
  dropped when a new sampling loop starts (the scheduler's `set_timesteps`, or a timestep higher than
  the last one where the denoiser is called without its pipeline).
`Applied.remove()` puts every processor, forward and scheduler method back and the weights into
their original order (a permutation: bit for bit). Under `torch.compile`, the stage is decided
before the compiled call (from the scheduler, for a pipeline target), and each stage, reuse pattern
and guidance branch that keeps residuals traces as one graph.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import F3Error
from ..reuse import StageClock, pattern_at
from ..windows import EagerOps, Regrouping, head_rows, regroup
from .processors import CogVideoXProcessor, HunyuanProcessor, TemporalProcessor, WanProcessor

# modules whose output channels are heads × head_dim (joint attention's context projections too)
_ROWS = ("to_q", "to_k", "to_v", "norm_q", "norm_k", "add_q_proj", "add_k_proj", "add_v_proj")
_OUTPUTS = ("to_out", "to_add_out")  # output projections: their input columns are heads × head_dim


@dataclass
class _UnitStage:
    dropped: bool = False
    regrouping: Regrouping | None = None
    frames: tuple[int, ...] | None = None
    whole: bool = False  # a window of the plan covers all of its frames, so that head runs dense


@dataclass
class PlanState:
    """Where the sampling loop is, shared by every hook and processor `apply` installed."""

    plan: Any
    units: dict  # id -> TemporalUnit
    per_stage: list[dict[str, _UnitStage]]
    periods: list[dict[str, int]]
    stage: int | None = None
    pattern: tuple[str, ...] = ()
    frames: int = 0  # token frames of the current call (full 3-D attention)
    context: str | None = None
    call: int = 0  # the denoiser call's index within its step (separate guidance branches without cache_context)
    timestep: int | None = None
    stepped: bool = False
    clock: StageClock = field(default_factory=StageClock)
    caches: dict = field(default_factory=dict)  # (context, call) -> {block: residual}
    switch: Any = None  # called with the new stage index before it runs
    pinned: bool = False  # `pin`: the stage and pattern stay as set, whatever the timestep
    on_weights: Any = None  # called after `apply` itself has permuted weights
    source: Any = None  # (pipeline, scheduler) whose scheduler gives the timesteps under torch.compile
    ops: EagerOps = field(default_factory=EagerOps)  # the kernel's tensor ops, constants shared by every unit
    _out: dict = field(default_factory=dict)
    _frames: dict = field(default_factory=dict)

    def own_weights(self) -> None:
        if self.on_weights is not None:
            self.on_weights()

    def reset(self) -> None:
        """A new sampling loop: the stage clock from zero, no residuals."""
        self.clock, self.timestep, self.stepped = StageClock(), None, False
        self.caches.clear()

    def at(self, timestep: int) -> None:
        """The denoiser is called at `timestep`: the step it belongs to, its stage and reuse pattern."""
        if self.pinned:
            return
        if self.timestep is not None and timestep > self.timestep:
            self.reset()
        if timestep == self.timestep and not self.stepped:
            self.call += 1  # the same step: the other branch of classifier-free guidance
            return
        index = self.plan.stage_for(timestep)
        step = self.clock.tick(index)
        if step == 0:
            self.caches.clear()
        if index != self.stage:
            self.switch(index)
            self.stage = index
        self.pattern = pattern_at(self.periods[index], step)
        self.timestep, self.stepped, self.call = timestep, False, 0

    def pin(self, stage: int, pattern: tuple[str, ...], residuals: dict) -> None:
        """Run every following call as a step of `stage` that reuses the blocks of `pattern`, with
        these `residuals` (what `bench` times: one kind of step at a time, whatever the timestep)."""
        if stage != self.stage:
            self.switch(stage)
            self.stage = stage
        self.pattern, self.caches, self.pinned = tuple(pattern), {(None, 0): dict(residuals)}, True
        self.context, self.call = None, 0

    def unit_plan(self, unit_id: str) -> tuple[bool, Regrouping | None, tuple[int, ...] | None]:
        found = self.per_stage[self.stage].get(unit_id)
        if found is None:
            return False, None, None
        if found.whole and self.frames > self.units[unit_id].frames:
            raise F3Error(f"{unit_id}: the plan's windows cover all {self.units[unit_id].frames} frames of the calibrated "
                          f"video, this call has {self.frames}; run the plan at {self.units[unit_id].frames} latent frames "
                          "or fewer, or plan at this length")
        return found.dropped, found.regrouping, found.frames

    def out_weight(self, unit_id: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` over the kept heads' columns at the current stage: a view of the module's own
        weight (wherever offloading has put it)."""
        columns = self._out.get(unit_id)
        return weight if columns is None else weight[:, :columns]

    def frame_index(self, unit_id: str, frames: tuple[int, ...], device) -> torch.Tensor:
        key = (unit_id, frames, str(device))
        if key not in self._frames:
            self._frames[key] = torch.tensor(frames, dtype=torch.long, device=device)
        return self._frames[key]

    def cache(self) -> dict:
        """The residuals of this branch of guidance: its `cache_context` name where the pipeline gives
        one, else its place among the step's calls."""
        return self.caches.setdefault((self.context, self.call), {})


def _input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _like(output_kind: str, tensor: torch.Tensor):
    return (tensor,) if output_kind == "tuple" else tensor


class Applied:
    """What `apply` changed, and how to put it back (`remove()`, or leave the `with` block)."""

    def __init__(self, state: PlanState, model=None):
        self.state, self.model = state, model
        self._valid_key = model is not None and model.cache_key is not None
        self._expected = None  # the weights' state after apply's own last permutation
        self._undo: list = []
        self.removed = False

    def reset(self) -> None:
        """Start the next denoiser call as the first step of a new sampling loop."""
        self.state.reset()

    def remove(self) -> None:
        """Restore processors, forwards, scheduler methods and the weights' order exactly."""
        if self.removed:
            return
        from ..models.base import weights_state

        # edited by anything but apply while it was on (fuse_lora, load_state_dict): not the fingerprinted weights
        untouched = self.model is not None and weights_state(self.model.denoiser) == self._expected
        while self._undo:
            self._undo.pop()()
        self.removed = True
        if self._valid_key and untouched:  # the weights hold their original values again: compiled caches stay valid
            self.model._weights_at_fingerprint = weights_state(self.model.denoiser)

    def __enter__(self) -> "Applied":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _set_instance(obj, name: str, value, undo: list) -> None:
    """Set `obj.name` on the instance; undoing puts back what the instance had (or nothing)."""
    had, before = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, value)

    def restore():
        if had:
            setattr(obj, name, before)
        else:
            delattr(obj, name)
    undo.append(restore)


def _stage_plans(plan, units: dict) -> list[dict[str, _UnitStage]]:
    result = []
    for stage in plan.stages:
        per: dict[str, _UnitStage] = {}
        blocks_dropped = set(stage.drop_blocks)
        for unit_id, unit in units.items():
            windows = stage.windows.get(unit_id)
            pruned = stage.prune_heads.get(unit_id, [])
            kept_frames = stage.keep_frames.get(unit_id)
            dropped = unit_id in stage.drop_attention or (unit_id == unit.block and unit_id in blocks_dropped)
            removed = dropped or unit.block in blocks_dropped  # (never called at this stage)
            if unit.spatiotemporal and len(pruned) == unit.heads and not removed:  # as the window_attention pass
                raise F3Error(f"{unit_id}: every head pruned; drop the attention instead (--granularity attention)")
            regrouping = None
            if pruned or (windows is not None and any(w is not None for w in windows)):
                regrouping = regroup(windows, pruned, unit.heads, unit.frames)
            whole = any(w is not None and w >= unit.frames - 1 for w in windows or ())
            if dropped or regrouping is not None or kept_frames is not None:
                per[unit_id] = _UnitStage(dropped, regrouping, None if kept_frames is None else tuple(kept_frames), whole)
        result.append(per)
    return result


def _processor_class(unit, attention: nn.Module, family: str):
    from .processors import UnitProcessor

    if isinstance(attention.processor, UnitProcessor):
        raise F3Error(f"{unit.id} already runs a plan; remove() the plan applied before applying another")
    projections = [getattr(attention, name, None) for name in ("to_q", "to_k", "to_v")] + [attention.to_out[0]]
    if any(hasattr(projection, "base_layer") for projection in projections):
        raise F3Error(f"{unit.id} has unfused LoRA layers; call pipe.fuse_lora() (or unload the LoRA) before apply")
    _check_weights(unit, attention)
    if not unit.spatiotemporal:
        if getattr(attention, "group_norm", None) is not None or getattr(attention, "spatial_norm", None) is not None:
            raise F3Error(f"{unit.id} normalises its input inside the attention; apply runs plain temporal attention")
        return TemporalProcessor
    if family == "wan":
        if getattr(attention, "fused_projections", False):
            raise F3Error(f"{unit.id} has fused q/k/v projections; call unfuse_qkv_projections() before apply")
        return WanProcessor
    if family == "cogvideox":
        return CogVideoXProcessor
    if family == "hunyuanvideo15":
        extra = getattr(getattr(attention, "to_add_out", None), "weight", None)
        if not isinstance(extra, torch.Tensor) or extra.ndim != 2 or extra.shape[1] != unit.heads * unit.head_dim:
            raise F3Error(f"{unit.id}.to_add_out is not a plain projection; apply needs it as nn.Linear")
        return HunyuanProcessor
    raise F3Error(f"apply does not run full 3-D attention of the {family} family")


def _permute(attention: nn.Module, unit, source: tuple[int, ...], target: tuple[int, ...]) -> None:
    """Move the heads of `attention`'s weights from order `source` to order `target` in place."""
    position = {head: i for i, head in enumerate(source)}
    index = head_rows([position[head] for head in target], unit.head_dim)
    with torch.no_grad():  # every permuted tensor made before any is written: all or nothing
        moves = [(tensor, tensor.index_select(0, index.to(tensor.device))) for tensor in _row_tensors(attention, unit)]
        for weight in _output_weights(attention):
            moves.append((weight, weight.index_select(1, index.to(weight.device))))
        for tensor, permuted in moves:
            tensor.copy_(permuted)


def _output_weights(attention: nn.Module) -> list[torch.Tensor]:
    """The output projections' weights: `to_out.0`, and joint attention's `to_add_out`."""
    found = [attention.to_out[0].weight]
    extra = getattr(attention, "to_add_out", None)
    if isinstance(getattr(extra, "weight", None), torch.Tensor):
        found.append(extra.weight)
    return found


def _row_tensors(attention: nn.Module, unit) -> list[torch.Tensor]:
    """The tensors whose rows are heads × head_dim: q/k/v weights and biases, norms over all heads."""
    width = unit.heads * unit.head_dim
    found = []
    for name in _ROWS:
        module = getattr(attention, name, None)
        for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
            if isinstance(tensor, torch.Tensor) and tensor.ndim in (1, 2) and tensor.shape[0] == width:
                found.append(tensor)
    return found


def _check_weights(unit, attention: nn.Module) -> None:
    """Refuse, before anything changes, weights `apply` cannot regroup exactly."""
    width = unit.heads * unit.head_dim
    for name in ("to_q", "to_k", "to_v"):
        weight = getattr(getattr(attention, name, None), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape[0] != width:
            raise F3Error(f"{unit.id}.{name} is not a plain projection with {width} output rows; apply needs the "
                          "q/k/v projections as nn.Linear (unfuse or dequantize them first)")
    out = getattr(attention.to_out[0], "weight", None)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != width:
        raise F3Error(f"{unit.id}.to_out.0 is not a plain projection from {width} inputs; apply needs it as nn.Linear")
    for tensor in [*_row_tensors(attention, unit), *_output_weights(attention)]:
        if tensor.is_meta or not tensor.is_floating_point() or type(tensor) not in (torch.Tensor, nn.Parameter):
            raise F3Error(f"{unit.id}: its weights are {'offloaded (on the meta device)' if tensor.is_meta else 'quantized'}; "
                          "apply regroups heads in the weights: keep them in memory in a floating dtype "
                          "(model CPU offload is fine; sequential or group offloading is not)")


def install(model, plan, units: list, *, pipeline=None) -> Applied:
    """Rewrite `model`'s denoiser (a `VideoModel`; the user's own modules) in place to run `plan`.
    `pipeline`: the pipeline object whose scheduler marks the start of each sampling loop."""
    by_id = {unit.id: unit for unit in units}
    modules = dict(model.denoiser.named_modules())
    from ..models.base import JOINT_FAMILIES

    for stage in plan.stages if model.family in JOINT_FAMILIES else ():
        for removed in (*stage.drop_blocks, *stage.reused_blocks, *stage.drop_attention):
            raise F3Error(f"{removed} has 2 outputs (text and video states); it cannot be removed or reused as a whole "
                          "(plan this model with --granularity window or head)")
    for stage in plan.stages if model.experts else ():
        model.expert_for(stage.timesteps)  # refuses a stage that spans both experts, as compile does
    state = PlanState(plan, by_id, _stage_plans(plan, by_id), [dict(s.reuse) for s in plan.stages])
    handle = Applied(state, model)
    undo = handle._undo
    from ..models.base import weights_state

    handle._expected = weights_state(model.denoiser)
    state.on_weights = lambda: setattr(handle, "_expected", weights_state(model.denoiser))
    try:
        for unit_id in {u for per in state.per_stage for u in per}:  # refusals first: nothing changes before them
            _processor_class(by_id[unit_id], modules[unit_id], model.family)
        _install_units(model, state, modules, by_id, undo)
        _install_blocks(plan, state, modules, by_id, undo)
        _install_denoisers(model, state, undo)
        if pipeline is not None:
            _install_scheduler(pipeline, model, state, undo)
        for denoiser in _denoisers(model):
            _set_instance(denoiser, MARK, True, undo)
    except BaseException:
        handle.remove()
        raise
    return handle


def _install_units(model, state: PlanState, modules: dict, by_id: dict, undo: list) -> None:
    planned = sorted({unit_id for per in state.per_stage for unit_id in per}, key=list(by_id).index)
    orders = {unit_id: tuple(range(by_id[unit_id].heads)) for unit_id in planned}

    def switch(stage: int) -> None:
        state._out.clear()
        for unit_id in planned:
            unit, attention = by_id[unit_id], modules[unit_id]
            found = state.per_stage[stage].get(unit_id)
            regrouping = None if found is None or found.dropped else found.regrouping
            target = regrouping.order if regrouping is not None else tuple(range(unit.heads))
            if target != orders[unit_id]:
                _permute(attention, unit, orders[unit_id], target)
                orders[unit_id] = target
            if regrouping is not None and regrouping.kept < unit.heads:
                state._out[unit_id] = regrouping.kept * unit.head_dim
        state.own_weights()

    def restore_order() -> None:
        state._out.clear()
        for unit_id in planned:
            if orders[unit_id] != tuple(range(by_id[unit_id].heads)):
                _permute(modules[unit_id], by_id[unit_id], orders[unit_id], tuple(range(by_id[unit_id].heads)))
                orders[unit_id] = tuple(range(by_id[unit_id].heads))
        state.stage = None

    state.switch = switch
    undo.append(restore_order)
    for unit_id in planned:
        attention = modules[unit_id]
        cls = _processor_class(by_id[unit_id], attention, model.family)
        _set_instance(attention, "processor", cls(by_id[unit_id], state, attention.processor), undo)


def _block_forward(block: str, original, own: bool, state: PlanState, dropped: list, carried: list, kind: str):
    def forward(*args, **kwargs):
        stage = state.stage
        if block in dropped[stage]:
            hidden = _input(args, kwargs)
            return _like(kind, torch.zeros_like(hidden) if own else hidden)
        if block in state.pattern:
            hidden = _input(args, kwargs)
            residual = state.cache()[block]
            return _like(kind, residual if own else hidden + residual)
        output = original(*args, **kwargs)
        if block in carried[stage]:
            state.cache()[block] = _tensor(output) if own else _tensor(output) - _input(args, kwargs)
        return output
    return forward


def _install_blocks(plan, state: PlanState, modules: dict, by_id: dict, undo: list) -> None:
    dropped = [frozenset(stage.drop_blocks) for stage in plan.stages]
    carried = [frozenset(stage.reused_blocks) for stage in plan.stages]
    blocks = [b for b in dict.fromkeys(b for stage in plan.stages for b in (*stage.drop_blocks, *stage.reused_blocks))]
    for block in blocks:
        module = modules[block]
        if getattr(vars(module).get("forward"), "f3compile_block", False):
            raise F3Error(f"{block} already runs a plan; remove() the plan applied before applying another")
    for block in blocks:
        module = modules[block]
        parameters = inspect.signature(module.forward).parameters
        kind = "tuple" if "return_dict" in parameters else "tensor"
        forward = _block_forward(block, module.forward, block in by_id, state, dropped, carried, kind)
        if kind == "tuple":
            original = forward

            def forward(*args, _inner=original, _block=block, **kwargs):  # diffusers' temporal models take return_dict
                if kwargs.get("return_dict", True):
                    raise F3Error(f"{_block} was called with return_dict=True; apply skips blocks called as pipelines "
                                  "call them (return_dict=False)")
                return _inner(*args, **kwargs)
        forward.f3compile_block = True
        _set_instance(module, "forward", forward, undo)


def _frames_of(family: str, module: nn.Module, sample: torch.Tensor) -> int:
    """Token frames of a denoiser call's sample (Wan: (B, C, F, h, w); CogVideoX: (B, F, C, h, w))."""
    config = module.config
    if family == "wan":
        return sample.shape[2] // int(config.patch_size[0])
    if family == "cogvideox":
        return sample.shape[1] // int(config.get("patch_size_t") or 1)
    if family == "hunyuanvideo15":
        return sample.shape[2] // int(config.patch_size_t)
    return sample.shape[2] if sample.ndim == 5 else 0


MARK = "_f3compile_applied"  # set on each denoiser while a plan is applied to it


def _denoisers(model) -> list[nn.Module]:
    return list(model.denoiser.values()) if model.experts else [model.denoiser]


def _install_denoisers(model, state: PlanState, undo: list) -> None:
    for denoiser in _denoisers(model):
        names = list(inspect.signature(denoiser.forward).parameters)
        sample_name, time_name = names[0], "timestep"
        time_index = names.index(time_name) if time_name in names else None

        def hook(module, args, kwargs, sample_name=sample_name, time_index=time_index):
            sample = kwargs[sample_name] if sample_name in kwargs else args[0]
            state.frames = _frames_of(model.family, module, sample)
            if torch.compiler.is_compiling():
                source = state.source
                if state.stage is None or source is None or source[0].scheduler is not source[1]:
                    raise F3Error("under torch.compile the stage is chosen before the compiled call, from the "
                                  "pipeline's scheduler: apply the plan to the pipeline (not to the denoiser alone), "
                                  "after giving it the scheduler it will run")
                return None
            timestep = kwargs["timestep"] if "timestep" in kwargs else args[time_index]
            state.at(int(torch.as_tensor(timestep).max()))
            return None

        handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
        undo.append(handle.remove)
        if callable(getattr(denoiser, "cache_context", None)):
            _install_context(denoiser, state, undo)


def _install_context(denoiser: nn.Module, state: PlanState, undo: list) -> None:
    """Follow diffusers' `cache_context(name)`, inside which pipelines call one branch of guidance."""
    import contextlib

    original = denoiser.cache_context

    @contextlib.contextmanager
    def cache_context(name, *args, **kwargs):
        before, state.context = state.context, name
        try:
            with original(name, *args, **kwargs):
                yield
        finally:
            state.context = before
    _set_instance(denoiser, "cache_context", cache_context, undo)


def _compiled(pipeline) -> bool:
    """Whether the pipeline calls its denoiser through torch.compile."""
    for name in ("transformer", "transformer_2", "unet"):
        module = getattr(pipeline, name, None)
        if module is not None and (type(module).__name__ == "OptimizedModule"
                                   or getattr(module, "_compiled_call_impl", None) is not None):
            return True
    return False


def _install_scheduler(pipeline, model, state: PlanState, undo: list) -> None:
    """A new `set_timesteps` is a new sampling loop. Under torch.compile the scheduler also says, before
    each step, which timestep the denoiser will be called at (its own `timesteps` and step index)."""
    scheduler = pipeline.scheduler
    state.source = (pipeline, scheduler)

    def predict(index: int | None) -> None:
        timesteps = getattr(scheduler, "timesteps", None)
        if index is not None and timesteps is not None and 0 <= index < len(timesteps):
            state.at(int(timesteps[index]))

    set_timesteps, step, set_begin_index = scheduler.set_timesteps, scheduler.step, getattr(scheduler, "set_begin_index", None)

    @functools.wraps(set_timesteps)  # pipelines read its signature (`retrieve_timesteps`: does it take sigmas?)
    def set_timesteps_(*args, **kwargs):
        result = set_timesteps(*args, **kwargs)
        state.reset()
        if _compiled(pipeline):
            predict(0)
        return result

    @functools.wraps(step)
    def step_(*args, **kwargs):
        result = step(*args, **kwargs)
        state.stepped = True
        if _compiled(pipeline):
            index = getattr(scheduler, "step_index", None)
            if index is None:  # schedulers without a step index: the position of this step's timestep, plus one
                timestep = inspect.signature(step).bind_partial(*args, **kwargs).arguments.get("timestep")
                if timestep is not None and torch.as_tensor(timestep).numel() == 1:
                    matches = (scheduler.timesteps == torch.as_tensor(timestep).to(scheduler.timesteps)).nonzero()
                    index = int(matches[0]) + 1 if len(matches) else None
            predict(index)
        return result

    _set_instance(scheduler, "set_timesteps", set_timesteps_, undo)
    _set_instance(scheduler, "step", step_, undo)
    if set_begin_index is not None:
        def set_begin_index_(*args, **kwargs):
            result = set_begin_index(*args, **kwargs)
            if _compiled(pipeline):
                state.reset()
                predict(getattr(scheduler, "begin_index", None))
            return result
        _set_instance(scheduler, "set_begin_index", set_begin_index_, undo)
