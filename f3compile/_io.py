"""Atomic file and directory writes: nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every `finally` and atomic write unwinds."""


_received: list[int] = []  # SIGINT / SIGTERM that reached a command run under `interrupts_unwind`


def _on_signal(signum, frame):
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def interrupts_unwind():
    """While a command runs, SIGINT raises KeyboardInterrupt and SIGTERM `Terminated` (instead of
    killing the process outright, which would leave the hidden temporary output beside the real one),
    and each is recorded: an exception raised while a finaliser (`__del__`) runs is swallowed by
    Python, so the atomic writes below also check the record before they commit. A signal that is
    ignored or already handled by an embedding application is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {}
    for signum, default in defaults.items():
        if signal.getsignal(signum) == default:
            previous[signum] = signal.signal(signum, _on_signal)
    _received.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise the interrupt a finaliser swallowed, if one arrived: called just before a commit."""
    if _received:
        raise Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `final`; rename it to `final` only on success.

    An existing `final` is replaced only once the new content is complete: it is moved aside,
    the new directory renamed into place, and the old one deleted. An exception at any point
    (KeyboardInterrupt included) leaves either the previous `final` or the complete new one, and
    nothing hidden beside it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_hidden_dir(final)
    try:
        yield tmp
        raise_if_interrupted()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = tmp.with_suffix(".old")  # unique per writer, like `tmp`
    try:
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except BaseException:
        # an interrupt can land between the two renames, or just after them: keep one whole output
        if old.exists():
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _hidden_sibling(path: Path) -> Path:
    """A new name `.NAME.RANDOM.tmp` beside `path` (the caller creates it exclusively)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _make_hidden_dir(final: Path) -> Path:
    """A new hidden directory beside `final`, created with the umask's permissions like any
    directory (`tempfile.mkdtemp` makes it 0700, and the rename would make every output private)."""
    while True:
        path = _hidden_sibling(final)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # mode 0666 less the umask, as open(path, "w") gives (mkstemp would give 0600)
        tmp = _hidden_sibling(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        raise_if_interrupted()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """Parse a JSON file; invalid JSON is a user error naming the line and what to do (`fix`)."""
    from .errors import F3Error

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise F3Error(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise F3Error(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); {fix}") from None
    except RecursionError:
        raise F3Error(f"{path} is not valid JSON (nested too deeply to read); {fix}") from None
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits() digits
        raise F3Error(f"{path} is not valid JSON ({str(exc).split(';')[0]}); {fix}") from None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def directory_sha256(path: str | os.PathLike) -> str:
    """sha256 over every file below `path`: relative names and contents, length-prefixed (moving
    bytes between a name and the previous file's content changes the hash)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name, content = str(file.relative_to(path)).encode(), file.read_bytes()
        for part in (name, content):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return "sha256:" + digest.hexdigest()
