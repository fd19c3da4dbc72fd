"""The staging store: where a supply's work area lives between the DAG's tasks, reachable by every worker.

Each task of a feed's DAG may run on a different worker (CeleryExecutor queues), so no task may read a file that
another task left on its own disk. A supply's work area (its manifest, its encrypted and decrypted files, the
frames each stage hands to the next, the rows set aside) lives in one store every worker reaches:

- ``staging_url`` unset (a single machine, the default): the local folder ``staging_dir``, as before;
- ``staging_url`` a local path or ``file://`` URL: a folder every worker mounts (a shared volume);
- ``staging_url`` any other fsspec URL (``s3://bucket/prefix``, ``gs://``, ``abfs://``): object storage, the same
  filesystems Airflow's ``ObjectStoragePath`` is built on (``universal_pathlib``). The filesystem's package
  (``s3fs``, ``gcsfs``, ``adlfs``) must be installed and its credentials given the usual way (environment,
  instance role); nothing here imports Airflow.

Every file access of a work area goes through this module. Frames between stages are Arrow IPC files, named
``*.arrow``; :func:`read_frame` also reads the parquet frames of a work area written before issue 9. A location
is a :class:`pathlib.Path` for a local store (files are written 0600 in 0700 folders, atomically by rename), else
a ``UPath``. Tools that need a real
file (gpg, the CSV parser) get one from :func:`local_file` / :func:`local_output`: for a remote store that is a
private temporary copy in this worker's own ``TMPDIR``, deleted as soon as the tool is done.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Iterator, Union

import pandas as pd
from upath import UPath

#: A place in the staging store: a local path, or a remote (fsspec) one.
Location = Union[Path, UPath]

_LOCAL_PROTOCOLS = ("", "file", "local")


def location(where: str | os.PathLike[str] | Location) -> Location:
    """A path or URL as a store location: ``pathlib.Path`` when it is on this machine's filesystem."""
    if isinstance(where, UPath):
        return Path(where.path) if where.protocol in _LOCAL_PROTOCOLS else where
    if isinstance(where, Path):
        return where
    text = os.fspath(where)
    if "://" not in text:
        return Path(text)
    loc = UPath(text)
    return Path(loc.path) if loc.protocol in _LOCAL_PROTOCOLS else loc


def is_local(loc: Location) -> bool:
    """Whether a location is a file on this machine (a tool can open it directly)."""
    return not isinstance(loc, UPath)


def root(settings: Any) -> Location:
    """The store's root: ``settings.staging_url`` if set, else the local ``staging_dir``."""
    return location(getattr(settings, "staging_url", None) or settings.staging_dir)


def supply_area(settings: Any, feed: str, period: str) -> Location:
    """The work area of one supply (``<root>/<feed>/<period>/work``)."""
    return root(settings) / feed / period / "work"


def make_private_dir(loc: Location) -> Location:
    """Create a folder (and its parents); 0700 on a local store. Object stores have no folders: nothing to do."""
    if is_local(loc):
        loc.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(loc, 0o700)
    else:
        loc.mkdir(parents=True, exist_ok=True)
    return loc


def _private_temp_beside(loc: Path) -> Path:
    """A new empty 0600 file beside ``loc``, to be renamed over it: readers never see half a file."""
    make_private_dir(loc.parent)
    temp = loc.with_name(f".{loc.name}.{secrets.token_hex(4)}.partial")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return temp


def write_bytes(where: str | Location, data: bytes) -> None:
    """Write a whole file into the store (replacing it), private to the observatory."""
    loc = location(where)
    if not is_local(loc):
        with loc.open("wb") as fh:
            fh.write(data)
        return
    temp = _private_temp_beside(loc)
    try:
        temp.write_bytes(data)
        os.replace(temp, loc)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_bytes(where: str | Location) -> bytes:
    """A whole file of the store."""
    loc = location(where)
    if is_local(loc):
        return loc.read_bytes()
    with loc.open("rb") as fh:
        return fh.read()


def write_text(where: str | Location, text: str) -> None:
    """Write a UTF-8 text file into the store (replacing it)."""
    write_bytes(where, text.encode("utf-8"))


def read_text(where: str | Location) -> str:
    """A UTF-8 text file of the store."""
    return read_bytes(where).decode("utf-8")


#: How the frames between stages are stored: an Arrow IPC file with pandas' dtypes in its metadata. A stage's
#: frames are written once and read once by the next stage: parquet's encoding and decoding cost about 3 s a stage
#: at 1M offences and its smaller files bought nothing here (issue 9). On this machine's disk they are not
#: compressed: LZ4 cost about 1 s of CPU per million rows written and read again, for files 2.4x smaller (a stage's
#: frames at 1M offences: 0.59 GB against 0.24 GB); a remote store, where bytes cross the network, gets LZ4.
_FRAME_COMPRESSION: Final = {True: "uncompressed", False: "lz4"}      # by is_local
_ARROW_MAGIC: Final = b"ARROW1"


def _write_frame_to(dest: Any, frame: pd.DataFrame, local: bool) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    # One record batch: the next stage reads each column as one array, and need not copy it whole each time a
    # kernel wants one (combine_chunks copies); a column in many chunks (the CSV reader's) is combined once here.
    table = pa.Table.from_pandas(frame, preserve_index=False).combine_chunks()
    feather.write_feather(table, dest, compression=_FRAME_COMPRESSION[local], chunksize=max(len(frame), 1))


def _read_frame_from(src: Any, magic: bytes) -> pd.DataFrame:
    """An Arrow IPC frame, or a parquet one (what a run from before issue 9's change left in a work area)."""
    return pd.read_feather(src) if magic == _ARROW_MAGIC else pd.read_parquet(src)


def frame_shape(where: str | Location) -> tuple[list[str], int] | None:
    """(columns, rows) of a staged frame from its Arrow IPC file's schema and batch headers, without reading its rows
    (reading a 1M-row frame only to count it took about as long as its load's first COPY batch); None when it is
    not a local Arrow IPC file (a remote store, a parquet frame of an older run): the frame is then read."""
    import pyarrow as pa

    loc = location(where)
    if not is_local(loc) or not os.path.isfile(loc):
        return None
    try:
        with pa.memory_map(os.fspath(loc)) as source:
            reader = pa.ipc.open_file(source)
            return list(reader.schema.names), int(reader.count_rows())
    except (pa.ArrowInvalid, OSError):
        return None


def write_frame(where: str | Location, frame: pd.DataFrame) -> None:
    """Write a frame into the store (replacing it), its index dropped, as an Arrow IPC file whatever its name."""
    loc = location(where)
    if not is_local(loc):
        with loc.open("wb") as fh:
            _write_frame_to(fh, frame, local=False)
        return
    temp = _private_temp_beside(loc)
    try:
        _write_frame_to(str(temp), frame, local=True)
        os.replace(temp, loc)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_frame(where: str | Location) -> pd.DataFrame:
    """A frame of the store (Arrow IPC, or parquet), with the dtypes it was written with.

    A local Arrow IPC file is read memory-mapped: its text columns stay the file's pages (which the kernel may drop
    and read again) rather than a copy on the task's heap; numbers are still copied into pandas' arrays. Measured on
    the sanitise task at 1M offences, in one process: its heap's peak rise 0.76 GB -> 0.48 GB. A frame is never
    written over in place (:func:`write_frame` replaces the file whole), so a mapped frame's pages never change.
    """
    loc = location(where)
    if is_local(loc):
        with open(loc, "rb") as fh:
            magic = fh.read(len(_ARROW_MAGIC))
        if magic == _ARROW_MAGIC:
            import pyarrow as pa

            # The frame's buffers keep the mapping alive after the file is closed.
            with pa.memory_map(os.fspath(loc)) as source:
                return pd.read_feather(source)
        return _read_frame_from(loc, magic)
    with loc.open("rb") as fh:
        magic = fh.read(len(_ARROW_MAGIC))
        fh.seek(0)
        return _read_frame_from(fh, magic)


def exists(where: str | Location) -> bool:
    """Whether a file or folder is in the store."""
    return location(where).exists()


def local_size(where: str | Location) -> int:
    """Bytes of a file of a local store; 0 for a file that is not there, or in a remote store."""
    loc = location(where)
    try:
        return os.path.getsize(loc) if is_local(loc) else 0
    except OSError:
        return 0


def files_in(folder: str | Location, pattern: str = "*") -> list[Location]:
    """The files of a store folder matching a glob pattern, sorted by name; none when it does not exist."""
    loc = location(folder)
    if not loc.exists():
        return []
    return sorted((p for p in loc.glob(pattern) if p.is_file() and not p.name.endswith(".partial")),
                  key=lambda p: p.name)


def remove(where: str | Location) -> None:
    """Delete a file or a whole folder of the store; nothing when it is not there."""
    loc = location(where)
    if is_local(loc):
        if loc.is_dir() and not loc.is_symlink():
            shutil.rmtree(loc, ignore_errors=True)
        else:
            loc.unlink(missing_ok=True)
        return
    if loc.exists():
        loc.fs.rm(loc.path, recursive=True)


def clear(folder: str | Location, keep: tuple[str, ...] = ()) -> None:
    """Delete everything in a store folder except the entries named in ``keep``."""
    loc = location(folder)
    if not loc.exists():
        return
    for child in list(loc.iterdir()):
        if child.name.rstrip("/") not in keep:
            remove(child)


def adopt(local: Path, dest: str | Location) -> str:
    """Move a file this task wrote on its own disk into the store (0600); returns the store location's text.

    Within one local filesystem this is a rename; otherwise it is copied up and the local file deleted, so the
    worker's disk keeps nothing.
    """
    loc = location(dest)
    if is_local(loc):
        make_private_dir(loc.parent)
        shutil.move(str(local), str(loc))
        os.chmod(loc, 0o600)
    else:
        loc.fs.put_file(str(local), loc.path)
        Path(local).unlink()
    return str(loc)


@contextmanager
def _private_temp_dir() -> Iterator[Path]:
    # mkdtemp makes the folder 0700 in this worker's own TMPDIR; it goes, with what is in it, even on failure.
    folder = Path(tempfile.mkdtemp(prefix="csp-staging-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def local_file(where: str | Location) -> Iterator[Path]:
    """A store file as a file on this machine, for a tool that opens paths (gpg, the CSV parser).

    A local store's file is given as it is. A remote one is copied into a private temporary folder of this worker,
    deleted when the block ends, with anything the tool wrote beside it.
    """
    loc = location(where)
    if is_local(loc):
        yield loc
        return
    with _private_temp_dir() as folder:
        copy = folder / loc.name
        loc.fs.get_file(loc.path, str(copy))
        os.chmod(copy, 0o600)
        yield copy


@contextmanager
def local_output(where: str | Location) -> Iterator[Path]:
    """A path on this machine for a tool to write a store file to.

    On a local store it is the store's own path (its folder made private). On a remote one it is a private temporary
    file, copied up to ``where`` when the block ends without error and deleted either way.
    """
    loc = location(where)
    if is_local(loc):
        make_private_dir(loc.parent)
        yield loc
        return
    with _private_temp_dir() as folder:
        out = folder / loc.name
        yield out
        if out.exists():
            loc.fs.put_file(str(out), loc.path)
