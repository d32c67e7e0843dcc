"""The runtime refuses damaged builds and what the README says cannot run, and dense artifacts
of every family reproduce the diffusers pipeline.

One dense export of tiny-latte (the cheapest builtin that ships a tokenizer, text encoder, VAE and
scheduler), written with its ONNX weights as external data so that every artifact kind (`.pt2`,
`.onnx`, `.onnx.data`) is present, is copied per case and damaged in the copy. Each refusal goes
through `f3compile generate`: exit status 2, one `error: ...` line naming the damaged file, no
video written. The undamaged build generating normally is the positive control, and the same
build is the onnxruntime backend's parity case against the Latte pipeline.
"""

import copy
import json
import shutil

import pytest
import torch

from f3compile import F3Error
from f3compile.compiler import compile_to_dir
from f3compile.exporters import ExportConfig, export
from f3compile.manifest import load_manifest
from f3compile.runtime import Runtime

from tests.helpers import assert_one_line, assert_one_line_error, rel, run

REL_PIPELINE = 1e-5  # final latents of a whole sampling loop, fp32 artifacts vs the diffusers pipeline
GENERATE = ["--prompt", "a red circle", "--steps", "1", "--backend", "onnxruntime"]


@pytest.fixture(scope="module")
def dense_build(models, tmp_path_factory):
    """A dense tiny-latte export carrying .pt2, .onnx and the ONNX weight file."""
    directory = tmp_path_factory.mktemp("refusals") / "build"
    export(models["tiny-latte"], None, directory, config=ExportConfig(samples=1))
    return directory


def _copy(build, tmp_path):
    target = tmp_path / "build"
    shutil.copytree(build, target)
    return target


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _modify(path):
    """Flip one bit in the middle: same size, different content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {"truncated": _truncate, "modified": _modify}


def _generate(capsys, build, tmp_path):
    out = tmp_path / "video.gif"
    code, _, err = run(capsys, "generate", build, *GENERATE, "-o", out)
    return code, err, out


def test_an_undamaged_copy_generates(capsys, dense_build, tmp_path):
    """Positive control for every refusal below: the copy itself is a working build."""
    build = _copy(dense_build, tmp_path)
    assert set(load_manifest(build)["stages"][0]["files"]) == {"pt2", "onnx", "onnx_data"}
    code, err, out = _generate(capsys, build, tmp_path)
    assert code == 0, err
    assert out.stat().st_size > 0


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", ["pt2", "onnx", "onnx_data"])
def test_damaged_artifacts_are_refused(capsys, dense_build, tmp_path, kind, damage):
    build = _copy(dense_build, tmp_path)
    relative = load_manifest(build)["stages"][0]["files"][kind]["path"]
    DAMAGES[damage](build / relative)
    code, err, out = _generate(capsys, build, tmp_path)
    assert_one_line_error(code, err, "does not match the sha256")
    assert f"{relative} does not match" in err
    assert not out.exists()


# the file of each shipped component that is damaged: its weights where it has any
COMPONENT_FILES = {
    "tokenizer": "tokenizer.json",
    "text_encoder": "model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "scheduler": "scheduler_config.json",
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("component", COMPONENT_FILES)
def test_damaged_components_are_refused(capsys, dense_build, tmp_path, component, damage):
    build = _copy(dense_build, tmp_path)
    entry = load_manifest(build)["components"][component]
    DAMAGES[damage](build / entry["path"] / COMPONENT_FILES[component])
    code, err, out = _generate(capsys, build, tmp_path)
    assert_one_line_error(code, err, "does not match the sha256")
    assert f"{entry['path']} does not match" in err
    assert not out.exists()


@pytest.mark.parametrize("component", COMPONENT_FILES)
def test_a_damaged_component_is_refused_when_the_build_is_opened(dense_build, tmp_path, component):
    """Before any work: opening a build checks the sha256 of every component, so a damaged VAE is
    refused before the denoising loop runs, not once the loop is done and the frames are decoded."""
    build = _copy(dense_build, tmp_path)
    entry = load_manifest(build)["components"][component]
    _modify(build / entry["path"] / COMPONENT_FILES[component])
    with pytest.raises(F3Error, match="does not match the sha256") as caught:
        Runtime(build, backend="onnxruntime")
    assert_one_line(caught.value)
    load_manifest(build, check_hashes=False)  # the document itself is still valid


def _two_stages(manifest: dict, first: list[int], second: list[int]) -> dict:
    """The one-stage dense manifest split into two stages over the same artifact."""
    data = copy.deepcopy(manifest)
    later = copy.deepcopy(data["stages"][0])
    data["stages"][0]["timesteps"], later["timesteps"], later["index"] = first, second, 1
    data["stages"].append(later)
    return data


@pytest.mark.parametrize("second, message", [
    ([498, 0], "leave a gap after 500"),  # timestep 499 belongs to no stage
    ([500, 0], "overlap the previous stage, which ends at 500"),  # 500 belongs to both
])
def test_stage_ranges_with_a_gap_are_refused(capsys, dense_build, tmp_path, second, message):
    build = _copy(dense_build, tmp_path)
    manifest = json.loads((build / "manifest.json").read_text())
    # control: contiguous ranges over the same files are a valid manifest
    (build / "manifest.json").write_text(json.dumps(_two_stages(manifest, [999, 500], [499, 0])))
    assert [s["timesteps"] for s in load_manifest(build)["stages"]] == [[999, 500], [499, 0]]
    (build / "manifest.json").write_text(json.dumps(_two_stages(manifest, [999, 500], second)))
    code, err, out = _generate(capsys, build, tmp_path)
    assert_one_line_error(code, err, message)
    assert "stages[1]" in err
    assert not out.exists()


def test_a_batch_range_the_graph_cannot_take_is_refused(models):
    """README: the tiny UNet3D traces with a CFG batch of at most 7, so a --dynamic-batch range up
    to 8 is refused with an F3Error naming it (raised by the capture `export` starts with).
    AOTInductor's refusal of any range is tested in test_aoti.py."""
    from f3compile.compiler.compile import capture

    model = models["tiny-unet3d"]
    assert capture(model, model.shapes, batch_range=(2, 7)) is not None  # control: the documented limit
    with pytest.raises(F3Error, match=r"does not support a batch of 2\.\.8"):
        capture(model, model.shapes, batch_range=(2, 8))


def test_animatediff_dense_pt2_reproduces_the_pipeline(models, tmp_path):
    model = models["tiny-animatediff"]
    compile_to_dir(model, None, tmp_path / "b")
    shapes = model.shapes
    reference = model.pipeline(prompt=["a red circle"], num_inference_steps=2, height=shapes.height, width=shapes.width,
                               num_frames=shapes.frames, output_type="latent", guidance_scale=7.5,
                               generator=torch.Generator().manual_seed(9)).frames
    ours = Runtime(tmp_path / "b", backend="torch").generate("a red circle", seed=9, steps=2, guidance_scale=7.5)
    assert ours.shape == reference.shape
    assert rel(ours, reference) <= REL_PIPELINE


def test_latte_dense_onnx_reproduces_the_pipeline(models, dense_build):
    model = models["tiny-latte"]
    shapes = model.shapes
    reference = model.pipeline(prompt=["A Blue Square"], num_inference_steps=3, height=shapes.height, width=shapes.width,
                               video_length=shapes.frames, output_type="latent", clean_caption=False, mask_feature=False,
                               guidance_scale=7.5, generator=torch.Generator().manual_seed(2)).frames
    ours = Runtime(dense_build, backend="onnxruntime").generate("A Blue Square", seed=2, steps=3, guidance_scale=7.5)
    assert ours.shape == reference.shape
    assert rel(ours, reference) <= REL_PIPELINE


def test_component_hash_separates_names_from_contents(tmp_path):
    """Moving bytes between a file's content and the next file's name must change the hash."""
    from f3compile.runtime.components import directory_sha256

    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    (first / "a").write_bytes(b"xb")
    (first / "c").write_bytes(b"1")
    (second / "a").write_bytes(b"x")   # names and contents in a row: "a" "xb" "c" "1" = "a" "x" "bc" "1"
    (second / "bc").write_bytes(b"1")
    assert directory_sha256(first) != directory_sha256(second)
