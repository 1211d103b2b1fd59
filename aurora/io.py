"""Writing files so that a reader, or a run killed half-way, never sees half of one: the content goes to a
temporary file beside the target (``.NAME.PID.tmp``, same filesystem), which ``os.replace`` then moves into place
in one step; on any failure the temporary file is removed. Also the figure writing the benchmark and plot commands
share (matplotlib without a display, PNG written the same way)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_write` puts ``path``'s content before moving it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.NAME.PID.tmp``) that processes killed mid-write left in ``folder``: those
    whose PID no longer runs (a live writer's file is left alone). Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yields the temporary path to write; moves it onto ``path`` when the block succeeds, removes it if not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], durable: bool = False) -> Path:
    """``write(tmp)`` writes the content to a temporary path, which then replaces ``path`` (parents created).

    ``durable``: the file and the rename are flushed to disk before returning (checkpoints)."""
    with _replacing(path, durable) as tmp:
        write(tmp)
    return Path(path)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``with atomic_open(path) as f:`` writes to a temporary file that replaces ``path`` when the block ends
    without an error (and is removed if it raises): for content written as it is produced (JSON lines)."""
    with _replacing(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **dumps: Any) -> Path:
    """``obj`` as JSON (``indent`` 2, a final newline), atomically; ``dumps``: more json.dumps options."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n")


def pyplot(command: str):
    """matplotlib's pyplot on the file-only Agg backend; without matplotlib, exit naming ``command``."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(f"{command}: the plot needs matplotlib (pip install 'aurora-long[dev]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))
    finally:
        plt.close(fig)
