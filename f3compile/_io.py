"""Atomic file and directory writes: nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator


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
