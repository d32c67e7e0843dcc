"""Which samplers each flow-matching family runs, checked when a model is loaded.

The flow-matching pipelines (Wan, HunyuanVideo 1.5) start from unscaled noise and hand the
scheduler's timestep to the transformer as it is: no `init_noise_sigma`, no `scale_model_input`.
`sampling` multiplies by `init_noise_sigma` and calls `scale_model_input` where a scheduler has them,
which is what the other pipelines do and, for the samplers listed here (initial sigma 1, input
scaling the identity), what these pipelines do too. Any other scheduler class (a sigma-space sampler
would be scaled by f3compile and not by the pipeline), and a configuration the pipeline itself cannot
run or seed, is refused here in one line.
"""

from __future__ import annotations

from ..errors import F3Error


def _dpm(config) -> str | None:
    if str(config.get("algorithm_type", "")).startswith("sde"):
        return (f"with algorithm_type {config.get('algorithm_type')!r} draws noise the pipeline does not seed; "
                "use dpmsolver++")
    return None


def _flow_euler(config) -> str | None:
    if config.get("use_dynamic_shifting"):
        return "uses dynamic shifting (a resolution-dependent mu the pipeline does not pass); set use_dynamic_shifting=False"
    if config.get("stochastic_sampling"):
        return "samples stochastically with noise the pipeline does not seed; set stochastic_sampling=False"
    return None


# family -> class name -> check of its config (None: runs with parity); each reproduces the pipeline in tests
FLOW_SCHEDULERS = {
    "wan": {
        "FlowMatchEulerDiscreteScheduler": _flow_euler,
        "UniPCMultistepScheduler": lambda config: None,
        "DPMSolverMultistepScheduler": _dpm,
        "DDIMScheduler": lambda config: None,  # builtin:ref-wan's (v-prediction); eta 0, as the pipeline steps it
    },
    # the pipeline hands the scheduler its own sigmas (`sampling.FAMILY_SIGMAS`): flow-matching Euler, as shipped
    "hunyuanvideo15": {"FlowMatchEulerDiscreteScheduler": _flow_euler},
}


def check_scheduler(family: str, scheduler, where: str) -> None:
    """Refuse, in one line, a sampler that `family`'s pipeline would not run as f3compile does."""
    if family not in FLOW_SCHEDULERS or scheduler is None:
        return
    name = type(scheduler).__name__
    supported = FLOW_SCHEDULERS[family]
    check = supported.get(name)
    if check is None:
        raise F3Error(f"{where}: scheduler {name} is not supported with {family} (its pipeline neither scales the "
                      f"noise nor the model input); use one of: {', '.join(supported)}")
    reason = check(dict(scheduler.config))
    if reason:
        raise F3Error(f"{where}: scheduler {name} {reason}")
