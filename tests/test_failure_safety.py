"""Failure safety of build outputs: an exception, a failed verification, SIGINT or SIGTERM during
`compile` or `export` leaves no output directory and no hidden temporary directory beside it, and
an output from a previous run stays byte for byte as it was.

Every check of an absence comes with its positive control: the hidden temporary directory is
shown to exist while the command runs, before it is shown to be gone afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from f3compile import _io
from f3compile._io import atomic_dir, write_json_atomic
from f3compile.cli import main

MODEL = "builtin:tiny-latte"
CLI = [sys.executable, "-m", "f3compile.cli"]
SUBPROCESS_TIMEOUT_S = 240  # a loaded 1-core machine needs ~20 s to reach the write of a tiny build


def tree_digest(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `directory` (directories listed too)."""
    digest = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        digest[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def hidden_beside(output: Path) -> list[str]:
    """Names of the hidden temporary entries that writing `output` creates next to it."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def previous_build(tmp_path_factory):
    """A complete output of a successful `f3compile export` of MODEL (ONNX, .pt2, pipeline, manifest)."""
    output = tmp_path_factory.mktemp("previous") / "build"
    assert run_cli("export", MODEL, "-o", output) == 0
    assert (output / "manifest.json").is_file()
    return output


def prepare_output(tmp_path: Path, previous_build: Path, existing: bool) -> tuple[Path, dict | None]:
    """The output path of a test, holding a copy of a previous successful export when `existing`."""
    output = tmp_path / "build"
    if not existing:
        return output, None
    shutil.copytree(previous_build, output)
    before = tree_digest(output)
    assert "manifest.json" in before and any(name.endswith("denoiser.pt2") for name in before)
    return output, before


def assert_untouched(output: Path, before: dict | None) -> None:
    """No hidden leftovers beside `output`; `output` absent, or as it was before the command."""
    assert hidden_beside(output) == []
    if before is None:
        assert not output.exists()
    else:
        assert tree_digest(output) == before


@pytest.mark.parametrize("failure,existing", [("raises", False), ("mismatch", True)],
                         ids=["raises-fresh", "mismatch-existing"])
def test_failed_verification_during_export_leaves_nothing(monkeypatch, capsys, tmp_path, previous_build,
                                                          failure, existing):
    """The verification helper crashing, or reporting a mismatch, fails the export without a trace."""
    import f3compile.exporters.verify as verify

    output, before = prepare_output(tmp_path, previous_build, existing)
    real_compare = verify.compare
    seen = []

    def failing_compare(reference, candidate, feeds, precision):
        # positive control: the export is being written into a hidden directory beside the output
        hidden = hidden_beside(output)
        seen.append(hidden)
        assert len(hidden) == 1 and (output.parent / hidden[0] / "onnx" / "stage0.onnx").is_file()
        if failure == "raises":
            raise RuntimeError("verification crashed")
        result = real_compare(reference, candidate, feeds, precision)
        return {**result, "passed": False}

    monkeypatch.setattr(verify, "compare", failing_compare)
    if failure == "raises":  # a bug in the tool: the exception keeps its traceback
        with pytest.raises(RuntimeError, match="verification crashed"):
            run_cli("export", MODEL, "-o", output)
    else:  # a failed comparison: one-line error, exit status 2
        assert run_cli("export", MODEL, "-o", output) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "differs from the torch program" in err[0]
    assert len(seen) == 1
    assert_untouched(output, before)


@pytest.mark.parametrize("where,existing", [("torch.export.save", True), ("write_manifest", False)],
                         ids=["save-existing", "manifest-fresh"])
def test_failed_save_during_compile_leaves_nothing(monkeypatch, tmp_path, previous_build, where, existing):
    """A save that dies after writing part of its file (disk full) fails the compile without a trace."""
    import f3compile.manifest
    from f3compile import memo
    from f3compile.memo import Memo

    output, before = prepare_output(tmp_path, previous_build, existing)
    seen = []

    def fail_after_writing(path: Path, write) -> None:
        write()
        # positive control: the partial file exists, inside the hidden directory beside the output
        hidden = hidden_beside(output)
        seen.append(hidden)
        assert len(hidden) == 1 and Path(path).is_relative_to(output.parent / hidden[0]) and Path(path).is_file()
        raise OSError(28, "No space left on device")

    real_save = torch.export.save
    monkeypatch.setattr(memo, "FILES", Memo(limit_bytes=0))  # every file is really saved, none written from memory
    if where == "torch.export.save":
        monkeypatch.setattr(torch.export, "save", lambda program, path, **kw: fail_after_writing(
            path, lambda: real_save(program, path, **kw)))
    else:
        monkeypatch.setattr(f3compile.manifest, "write_manifest", lambda directory, data: fail_after_writing(
            directory / "manifest.json", lambda: (directory / "manifest.json").write_text('{"schema": ')))
    with pytest.raises(OSError, match="No space left"):
        run_cli("compile", MODEL, "-o", output)
    assert len(seen) == 1
    assert_untouched(output, before)


@pytest.mark.parametrize("moment", ["before", "after"])
def test_interrupt_while_replacing_an_existing_output(monkeypatch, tmp_path, moment):
    """An interrupt just before or just after the new directory is renamed into place leaves one
    complete output (the previous one, or the new one) and nothing hidden beside it."""
    output = tmp_path / "build"
    output.mkdir()
    (output / "manifest.json").write_text("previous\n")
    before = tree_digest(output)
    real_rename, committed = os.rename, []

    def interrupted_rename(source, target):
        if Path(target) == output and not committed:  # the first rename into place: the commit
            committed.append((Path(source).name, output.exists(), hidden_beside(output)))
            if moment == "after":
                real_rename(source, target)
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(output) as tmp:
            (tmp / "manifest.json").write_text("new\n")
    # positive control: the new content was being renamed into place from a hidden directory,
    # the previous output already moved aside beside it
    [(source, output_present, hidden)] = committed
    assert source in hidden and not output_present and len(hidden) == 2
    assert hidden_beside(output) == []
    expected = before if moment == "before" else {"manifest.json": hashlib.sha256(b"new\n").hexdigest()}
    assert tree_digest(output) == expected


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """Atomic outputs carry the modes a plain mkdir / open(path, "w") gives under the umask, not
    the owner-only modes of a temporary file."""
    previous_umask = os.umask(0o022)
    try:
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "plan.json").write_text("{}\n")
        with atomic_dir(tmp_path / "build") as tmp:
            (tmp / "stage0").mkdir()
        write_json_atomic(tmp_path / "plan.json", {})
    finally:
        os.umask(previous_umask)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    # positive control: the umask gives plain writes group- and world-readable modes
    assert (mode(tmp_path / "plain"), mode(tmp_path / "plain" / "plan.json")) == (0o755, 0o644)
    assert mode(tmp_path / "build") == mode(tmp_path / "build" / "stage0") == 0o755
    assert mode(tmp_path / "plan.json") == 0o644


@pytest.mark.parametrize("writer", ["directory", "file"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_swallowed_by_a_finaliser_still_stops_the_commit(tmp_path, monkeypatch, writer, signum):
    """A signal whose handler runs inside a `__del__` raises there, and Python swallows that
    exception: the command would go on and commit its output. The atomic writes check the record
    of received signals before they commit."""
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signum)  # delivered while the finaliser runs
            time.sleep(0.05)

    output = tmp_path / ("build" if writer == "directory" else "plan.json")
    expected = _io.Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(expected):
        with _io.interrupts_unwind():
            if writer == "directory":
                with atomic_dir(output) as tmp:
                    (tmp / "manifest.json").write_text("new\n")
                    Finalised()
            else:
                Finalised()
                write_json_atomic(output, {})
    # positive control: the interrupt was raised inside the finaliser and swallowed there
    assert swallowed == [expected]
    assert not output.exists() and hidden_beside(output) == []
    # the handlers are restored and the record cleared once the command is over
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and not _io._received
    write_json_atomic(output, {})
    assert output.exists()


def _reset_signals() -> None:
    # a shell's background job starts with SIGINT ignored; the command must see it as a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("verb,signum,existing", [("compile", signal.SIGTERM, True), ("export", signal.SIGINT, False)],
                         ids=["compile-SIGTERM-existing", "export-SIGINT-fresh"])
def test_signal_during_a_cli_write_leaves_nothing(tmp_path, previous_build, verb, signum, existing):
    """A real SIGINT / SIGTERM reaching `f3compile compile|export` while it writes its output."""
    output, before = prepare_output(tmp_path, previous_build, existing)
    log = tmp_path / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(CLI + [verb, MODEL, "-o", str(output)], stdout=sink, stderr=subprocess.STDOUT,
                                   env=env, preexec_fn=_reset_signals)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
            hidden = []
            while not hidden:  # positive control: the output is being written into a hidden directory
                assert process.poll() is None, f"exited ({process.returncode}) before writing:\n{log.read_text()}"
                assert time.monotonic() < deadline, "the command never started writing its output"
                hidden = hidden_beside(output)
                time.sleep(0.005)
            process.send_signal(signum)
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert_untouched(output, before)
    text = log.read_text()
    assert returncode == 128 + signum, text
    assert text.strip().splitlines()[-1] == ("error: interrupted" if signum == signal.SIGINT else "error: terminated")
    assert "Traceback" not in text
