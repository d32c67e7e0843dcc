import json

import numpy as np
import pytest

from f3compile.calibration import read_prompts
from f3compile.models.reference import COLORS, DIRECTIONS, SHAPES, Labels, caption, make_clips, render_clip, write_prompts_jsonl
from f3compile.models.reference.domain import HELDOUT_TEMPLATES, TRAIN_TEMPLATES

COLOUR_TOL = 0.02


def centroid(frame: np.ndarray) -> np.ndarray:
    weight = np.abs(frame - frame[0, 0]).sum(-1)  # the corner is background
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


@pytest.mark.parametrize("direction, sign", [("left", (-1, 0)), ("right", (1, 0)), ("up", (0, -1)), ("down", (0, 1)), ("static", (0, 0))])
def test_motion_follows_the_direction(direction, sign):
    clip = render_clip(Labels("circle", "red", direction), frames=8, size=16, seed=3)
    moved = centroid(clip[-1]) - centroid(clip[0])
    for axis in (0, 1):
        if sign[axis]:
            assert np.sign(moved[axis]) == sign[axis] and abs(moved[axis]) > 5  # about half the frame
        else:
            assert abs(moved[axis]) < 0.2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("color", list(COLORS))
def test_colour_shape_and_bounds(shape, color):
    clip = render_clip(Labels(shape, color, "right"), seed=1)
    assert clip.shape == (8, 16, 16, 3) and clip.dtype == np.float32
    assert clip.min() >= 0 and clip.max() <= 1
    brightest = clip[0].reshape(-1, 3)[np.argmax(np.abs(clip[0] - clip[0, 0, 0]).sum(-1))]
    np.testing.assert_allclose(brightest, COLORS[color], atol=COLOUR_TOL)
    for frame in clip:  # the shape never leaves the frame: the border stays background
        border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
        assert np.abs(border - frame[0, 0]).max() < 0.35


def test_shapes_differ_in_area():
    areas = {s: (np.abs(render_clip(Labels(s, "blue", "static"))[0] - 0.08).sum(-1) > 0.5).sum() for s in SHAPES}
    assert areas["square"] > areas["circle"] > areas["triangle"]


def test_deterministic_and_seed_dependent():
    a, captions_a, labels_a = make_clips(6, seed=4)
    b, captions_b, labels_b = make_clips(6, seed=4)
    c, _, _ = make_clips(6, seed=5)
    assert np.array_equal(a, b) and captions_a == captions_b and labels_a == labels_b
    assert not np.array_equal(a, c)


def test_heldout_wording_is_disjoint_from_training():
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    rng = np.random.default_rng(0)
    labels = [Labels(s, c, d) for s in SHAPES for c in COLORS for d in DIRECTIONS]
    train = {caption(item, rng, "train") for item in labels for _ in range(3)}
    heldout = {caption(item, rng, "heldout") for item in labels for _ in range(3)}
    assert not train & heldout
    for item in labels:  # every caption names the colour
        assert item.color in caption(item, rng, "heldout") and item.color in caption(item, rng, "train")


def test_heldout_words_never_occur_in_training_wording():
    from f3compile.models.reference import domain

    def words(texts):
        return {w for text in texts for w in text.replace("-", " ").replace(",", " ").replace(":", " ").split()}

    heldout = words(w for group in (domain._HELDOUT_SHAPE_WORDS, domain._HELDOUT_DIRECTION_WORDS)
                    for values in group.values() for w in values) | {"keeps", "watch"}
    heldout -= {"left", "right"}  # the direction words themselves are the labels' names
    train = words(w for group in (domain._SHAPE_WORDS, domain._DIRECTION_WORDS) for values in group.values()
                  for w in values) | words(TRAIN_TEMPLATES)
    assert heldout and not heldout & train, heldout & train


def test_prompt_file_carries_labels(tmp_path):
    write_prompts_jsonl(tmp_path / "p.jsonl", 10, seed=2)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(set(r) == {"prompt", "color", "shape", "direction"} for r in records)
    assert read_prompts(tmp_path / "p.jsonl") == [r["prompt"] for r in records]
