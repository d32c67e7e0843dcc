"""The runtime runs artifacts like a deployment: parity with diffusers, stage switching, CLI."""

import subprocess
import sys

import pytest
import torch

from f3compile.compiler import compile_to_dir
from f3compile.exporters import ExportConfig, export
from f3compile.models import find_temporal_units
from f3compile.planning import make_plan
from f3compile.runtime import Runtime
from f3compile.sampling import denoise_loop, initial_latents

from ..passes.reference import masked
from tests.helpers import assert_one_line_error, rel, run

REL_LOOP = 1e-5  # whole sampling loop, fp32, artifacts vs eager


@pytest.fixture(scope="module")
def unet3d_builds(models, calibrations, dense_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    model = models["tiny-unet3d"]
    plan = make_plan(calibrations["tiny-unet3d"][1], 0.5, "attention", stages=2)
    # the second stage drops the attentions the first keeps, so running one stage throughout cannot pass
    units = [u.id for u in find_temporal_units(model)]
    plan.stages[1].drop_attention = [u for u in units if u not in plan.stages[0].drop_attention]
    (root / "dense").symlink_to(dense_export("tiny-unet3d")[0], target_is_directory=True)  # read only
    export(model, plan, root / "pruned", config=ExportConfig(samples=1))
    return root, plan


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_dense_artifacts_reproduce_the_diffusers_pipeline(models, unet3d_builds, backend):
    root, _ = unet3d_builds
    model = models["tiny-unet3d"]
    shapes = model.shapes
    reference = model.pipeline(prompt=["a red circle"], num_inference_steps=4, height=shapes.height, width=shapes.width,
                               num_frames=shapes.frames, output_type="latent", guidance_scale=7.5,
                               generator=torch.Generator().manual_seed(9)).frames
    ours = Runtime(root / "dense", backend=backend).generate("a red circle", seed=9, steps=4, guidance_scale=7.5)
    assert ours.shape == reference.shape
    assert rel(ours, reference) <= REL_LOOP


def test_latte_dense_pt2_reproduces_the_pipeline(models, tmp_path):
    model = models["tiny-latte"]
    compile_to_dir(model, None, tmp_path / "b")
    shapes = model.shapes
    reference = model.pipeline(prompt=["A Blue Square"], num_inference_steps=3, height=shapes.height, width=shapes.width,
                               video_length=shapes.frames, output_type="latent", clean_caption=False, mask_feature=False,
                               generator=torch.Generator().manual_seed(2)).frames
    ours = Runtime(tmp_path / "b").generate("A Blue Square", seed=2, steps=3)
    assert rel(ours, reference) <= REL_LOOP


def test_stage_switching_follows_the_plan(models, unet3d_builds):
    """Two-stage artifacts equal the eager model masked with each stage's plan at its timesteps."""
    root, plan = unet3d_builds
    model = models["tiny-unet3d"]
    units = find_temporal_units(model)
    runtime = Runtime(root / "pruned")
    assert [s["timesteps"] for s in runtime.manifest["stages"]] == [list(s.timesteps) for s in plan.stages]
    ours = runtime.generate("a green triangle", seed=5, steps=6)

    def reference_for(t):
        stage = plan.stages[plan.stage_for(t)]

        def call(sample, timestep, context):
            with masked(model, stage, units):
                return model.denoise(sample, timestep, context)
        return call

    cond, uncond = model.encode_prompts(["a green triangle"])
    generator = torch.Generator().manual_seed(5)
    latents = initial_latents(model.latent_shape(model.shapes), model.scheduler, generator)
    expected = denoise_loop(None, model.scheduler, latents, cond, uncond, 6, 7.5, generator, denoise_for=reference_for)
    assert rel(ours, expected) <= REL_LOOP
    dense = Runtime(root / "dense").generate("a green triangle", seed=5, steps=6)
    assert rel(ours, dense) > 1e-4
    # positive control: the stages really differ, so a runtime that did not switch would be caught
    assert set(plan.stages[0].drop_attention).isdisjoint(plan.stages[1].drop_attention)
    generator = torch.Generator().manual_seed(5)
    latents = initial_latents(model.latent_shape(model.shapes), model.scheduler, generator)
    first_stage_only = denoise_loop(None, model.scheduler, latents, cond, uncond, 6, 7.5, generator,
                                    denoise_for=lambda t: reference_for(plan.stages[0].timesteps[0]))
    assert rel(ours, first_stage_only) > 1e-3
    # the stages hold one copy of what they have in common: every tensor equal by name and value
    # in both stage programs is one storage; what the plan changes stays each stage's own
    first, second = (dict(stage.programs[()].module.state_dict(keep_vars=True)) for stage in runtime.stages)
    equal = [n for n in first if n in second and first[n].shape == second[n].shape and torch.equal(first[n], second[n])]
    assert equal and all(first[n].data_ptr() == second[n].data_ptr() for n in equal)
    held = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in [*first.values(), *second.values()]}.values())
    assert runtime.weights.bytes == held < sum(t.numel() * t.element_size() for t in [*first.values(), *second.values()])


def test_onnx_stages_share_one_weight_file_and_one_mapping(unet3d_builds):
    """Both stages' ONNX graphs keep their initializers in the build's one weight file, each distinct
    tensor once; the runtime's CPU sessions compute with one mapping of it (a shared tensor is one
    OrtValue in both sessions) and give what a plain onnxruntime session over the same graph gives."""
    import numpy as np
    import onnx
    import onnxruntime

    from f3compile.manifest import load_manifest

    build = unet3d_builds[0] / "pruned"
    stages = load_manifest(build)["stages"]
    assert {stage["files"]["onnx_data"]["path"] for stage in stages} == {"onnx/weights.onnx.data"}
    distinct, referenced = {}, 0  # read by onnx itself: every graph's initializers of 1 KiB or more
    for stage in stages:
        for init in onnx.load(str(build / stage["files"]["onnx"]["path"])).graph.initializer:
            array = onnx.numpy_helper.to_array(init)
            if array.nbytes >= 1024:
                distinct[(array.dtype.str, array.shape, array.tobytes())] = array.nbytes
                referenced += array.nbytes
    size = (build / "onnx" / "weights.onnx.data").stat().st_size
    assert all(nbytes < 2**20 for nbytes in distinct.values())  # tiny: 64-byte alignment only
    assert sum(distinct.values()) <= size < sum(distinct.values()) + 64 * len(distinct)
    assert size < 0.75 * referenced  # the stages share most of their weights
    runtime = Runtime(build, backend="onnxruntime")
    first, second = (stage.programs[()] for stage in runtime.stages)
    assert runtime.weights.bytes == sum(distinct.values())
    common = [name for name in first.initializers if name in second.initializers
              and np.array_equal(first.initializers[name].numpy(), second.initializers[name].numpy())]
    assert common and all(first.initializers[n] is second.initializers[n] for n in common)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(spec["shape"], generator=generator) if spec["dtype"] == "float32"
              else torch.full(spec["shape"], 500, dtype=getattr(torch, spec["dtype"])) for spec in stages[1]["inputs"]]
    plain = onnxruntime.InferenceSession(str(build / stages[1]["files"]["onnx"]["path"]))
    expected = plain.run(None, {spec["name"]: t.numpy() for spec, t in zip(stages[1]["inputs"], inputs)})[0]
    assert rel(second.run(*inputs)[0], torch.from_numpy(expected)) <= 1e-6


@pytest.mark.parametrize("backend, suffix", [("torch", ".gif"), ("onnxruntime", ".png")])
def test_generate_cli_writes_videos(capsys, models, unet3d_builds, tmp_path, backend, suffix):
    root, _ = unet3d_builds
    shapes = models["tiny-unet3d"].shapes
    out = tmp_path / f"video{suffix}"
    code, stdout, err = run(capsys, "generate", root / "pruned", "--prompt", "a red circle", "--steps", "3",
                            "--backend", backend, "-o", out, "--save-latents", tmp_path / "l.safetensors")
    assert code == 0, err
    import imageio.v2 as imageio

    frames = imageio.mimread(str(out)) if suffix == ".gif" else [imageio.imread(str(out))]
    side = shapes.height
    if suffix == ".gif":
        assert len(frames) == shapes.frames and frames[0].shape[:2] == (side, side)
    else:
        assert frames[0].shape[:2] == (side, shapes.frames * side)
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "l.safetensors"))["latents"].shape == (1, 4, shapes.frames, side // 2, side // 2)


def test_generate_errors(capsys, unet3d_builds, tmp_path):
    root, _ = unet3d_builds
    cases = [
        (["generate", root / "dense", "--prompt", "x", "-o", tmp_path / "v.avi"], "must end in .gif, .mp4 or .png"),
        (["generate", tmp_path, "--prompt", "x", "-o", tmp_path / "v.gif"], "has no manifest.json"),
        (["generate", root / "dense", "--prompt", "x", "--guidance-scale", "1", "-o", tmp_path / "v.gif"], "--guidance-scale"),
    ]
    if __import__("importlib").util.find_spec("tensorrt") is None:
        cases.append((["generate", root / "dense", "--prompt", "x", "--backend", "tensorrt", "-o", tmp_path / "v.gif"],
                      "no trt artifact"))
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "v.gif").exists()


def test_tampered_artifacts_are_refused(capsys, models, tmp_path):
    compile_to_dir(models["tiny-latte"], None, tmp_path / "b")
    with open(tmp_path / "b" / "stage0" / "denoiser.pt2", "ab") as handle:
        handle.write(b"x")
    code, _, err = run(capsys, "generate", tmp_path / "b", "--prompt", "x", "-o", tmp_path / "v.gif")
    assert_one_line_error(code, err, "does not match the sha256")


def test_runtime_import_stays_light():
    code = ("import sys, f3compile.runtime; "
            "bad = [m for m in sys.modules if m.startswith(('f3compile.calibration', 'f3compile.passes', 'f3compile.exporters'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
