"""What many test modules share: the tiny models' names, the relative error, the CLI runner and the
checks of a one-line error."""

from __future__ import annotations

import numpy as np
import torch

from f3compile.errors import F3Error
from f3compile.models.registry import builtin_names

TINY = builtin_names(kind="diffusion", group="tiny", attention="temporal")  # the factorised tiny models every stage is tested on
# the tiny full 3-D attention text-to-video models with one denoiser (Wan 2.2's two experts:
# tests/models/test_experts.py; image-to-video: tests/models/test_image_to_video.py)
TINY_FULL = [name for name in builtin_names(kind="diffusion", group="tiny", attention="full")
             if name != "tiny-wan2.2" and "i2v" not in name]


def rel(ours, reference) -> float:
    """Relative L2 error ‖ours − reference‖ / ‖reference‖ (torch tensors or numpy arrays)."""
    ours, reference = (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)) for x in (ours, reference))
    return float((ours - reference).norm() / reference.norm())


def run(capsys, *argv):
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    from f3compile.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exits (usage errors, --help)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, message):
    """The CLI's refusal: exit status 2 and one line `error: …` holding `message`, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err


def assert_one_line(exc: F3Error) -> None:
    """An `F3Error` whose message is one printable line."""
    message = str(exc)
    assert message and len(message.splitlines()) == 1, f"not one line: {message!r}"
    message.encode("utf-8")  # printable to a UTF-8 terminal (no lone surrogates)
