"""Safe output for the command line and the reproduction suite.

Two rules, one mechanism:

- curax never overwrites a file it did not write. A folder it writes holds a manifest
  (`.curax-manifest.json`) listing its files, so a rerun may replace its own previous output
  and refuses (naming the file) anything else, unless forced. A single JSON file it writes says
  so in a `"written_by"` field.
- Output appears complete or not at all. A folder is built in a hidden temporary sibling
  (`.NAME.*.curax-partial`) and renamed into place at the end; a single file is written to a
  temporary sibling and `os.replace`d. An interrupted run removes its temporary output (the
  command line's signal handler calls `discard_pending`), so the previous complete output
  stays, or nothing is left.
"""

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


MANIFEST = ".curax-manifest.json"
PARTIAL = ".curax-partial"

# Held while output is moved into place: a signal handler takes it before removing temporary
# output and exiting, so an interrupt never lands half-way through a commit.
COMMIT_LOCK = threading.RLock()
_PENDING: set[Path] = set()


class OutputError(ValueError):
    """Output that curax refuses to write (a foreign file in the way, an unwritable folder)."""


def discard_pending() -> None:
    """Remove every temporary output not yet committed (called on interrupt)."""
    with COMMIT_LOCK:
        for path in list(_PENDING):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except OSError:
                    pass
            _PENDING.discard(path)


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _check_parent(path: Path, what: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {str(path)!r}: cannot write to folder {str(parent)!r}")


def read_manifest(folder: Path) -> list[str] | None:
    """The files curax wrote in `folder` according to its manifest (None: no valid manifest)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _top_level(files: Iterable[str]) -> set[str]:
    return {Path(f).parts[0] for f in files if Path(f).parts}


def foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing `folder` that curax's manifest there does not list."""
    own = _top_level(read_manifest(folder) or []) | {MANIFEST}
    return sorted(e for e in os.listdir(folder) if e not in own and not e.endswith(PARTIAL))


def check_output_dir(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Refuse (with `OutputError`) an output folder curax cannot or must not write.

    **Arguments:**

    - `path`: the output folder; its parent must exist.
    - `force`: accept a folder holding files curax did not write (they are kept, and files of
        the same name are replaced). Keyword only argument.

    **Returns:**

    `path` as a `Path`.
    """
    path = Path(path)
    _check_parent(path, "output folder")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"output folder {str(path)!r} exists and is not a folder")
        foreign = foreign_entries(path)
        if foreign and not force:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise OutputError(
                f"output folder {str(path)!r} holds {foreign[0]!r}{more}, which curax did not "
                "write; choose a new or empty folder, or pass --force to write beside it"
            )
        if foreign and not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to output folder {str(path)!r}")
    return path


class OutputDir:
    """Context manager building an output folder atomically.

    `with OutputDir(out) as tmp:` yields a temporary sibling folder to write into. On normal
    exit the folder is committed: renamed to `out` (after moving curax's own previous output
    aside), or, when `out` holds foreign files and `force=True`, its files are moved in one by
    one, with the files named in `last` moved last. On an exception the temporary folder is
    removed and `out` is untouched.

    **Arguments:**

    - `path`: the output folder.
    - `force`: see `check_output_dir`. Keyword only argument.
    - `writer`: recorded in the manifest (e.g. `"curax reproduce"`). Keyword only argument.
    - `last`: files whose presence means "complete" (e.g. `report.md`): moved last, and removed
        from `out` first when merging. Keyword only argument.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        force: bool = False,
        writer: str = "curax",
        last: tuple[str, ...] = (),
    ):
        self.path = check_output_dir(path, force=force)
        self.force = force
        self.writer = writer
        self.last = last
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        with COMMIT_LOCK:
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=PARTIAL, dir=self.path.parent)
            )
            _PENDING.add(tmp)
        os.chmod(tmp, _umask_mode(0o777))
        self.tmp = tmp
        return tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            with COMMIT_LOCK:
                shutil.rmtree(self.tmp, ignore_errors=True)
                _PENDING.discard(self.tmp)
            return
        self._commit(self.tmp)

    def _commit(self, tmp: Path) -> None:
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "written_by": self.writer,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        path = self.path
        with COMMIT_LOCK:
            if not (path.exists() or path.is_symlink()):
                os.rename(tmp, path)
            elif not foreign_entries(path):
                # Only our own previous output: swap folders (the old one disappears whole).
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                _PENDING.add(old)
                os.rename(path, old / "out")
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
                _PENDING.discard(old)
            elif self.force:
                self._merge(tmp, files, manifest)
            else:  # foreign files appeared while we computed
                check_output_dir(path, force=False)
            _PENDING.discard(tmp)

    def _merge(self, tmp: Path, files: list[str], manifest: dict[str, Any]) -> None:
        path = self.path
        old_own = read_manifest(path) or []
        # A manifest covering old and new files first, so a crash mid-way leaves nothing
        # that a rerun would count as foreign; "complete" markers go first and come back last.
        union = manifest | {"files": sorted(set(old_own) | set(files)), "partial": True}
        write_file_atomic(path / MANIFEST, json.dumps(union, indent=1) + "\n")
        for name in self.last:
            if name in old_own and (path / name).is_file():
                (path / name).unlink()
        order = [f for f in files if f not in self.last] + [f for f in files if f in self.last]
        for rel in order:
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, path / rel)
        for rel in set(old_own) - set(files):
            try:
                (path / rel).unlink()
            except OSError:
                pass
        os.replace(tmp / MANIFEST, path / MANIFEST)
        shutil.rmtree(tmp, ignore_errors=True)


def is_own_file(path: Path) -> bool:
    """Whether `path` is a JSON file curax wrote (it has a `"written_by": "curax ..."` key)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
        data = json.loads(head)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("written_by", "")).startswith("curax")


def check_output_file(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Refuse (with `OutputError`) an output file curax cannot or must not write: its folder
    must exist and be writable, and an existing file must be one curax wrote (a JSON file with
    `"written_by": "curax ..."`) unless `force`.

    **Returns:**

    `path` as a `Path`.
    """
    path = Path(path)
    _check_parent(path, "output file")
    if path.is_dir():
        raise OutputError(f"output file {str(path)!r} is a folder")
    if path.exists() and not force and not is_own_file(path):
        raise OutputError(
            f"output file {str(path)!r} exists and curax did not write it; choose another "
            "name, or pass --force to replace it"
        )
    return path


def write_file_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary sibling and `os.replace`, so `path` holds
    either its previous content or the new one, never a part."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    with COMMIT_LOCK:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=path.parent)
        tmp = Path(name)
        _PENDING.add(tmp)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, _umask_mode(0o666))
        with COMMIT_LOCK:
            os.replace(tmp, path)
            _PENDING.discard(tmp)
    except BaseException:
        with COMMIT_LOCK:
            tmp.unlink(missing_ok=True)
            _PENDING.discard(tmp)
        raise
