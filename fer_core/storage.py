"""Local paths and bucket URIs (s3://, gs://) behind one small interface, through pyarrow filesystems."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://")


def is_remote(path: str) -> bool:
    """True for a bucket URI, False for a local path."""
    return str(path).startswith(REMOTE_SCHEMES)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; local paths become absolute."""
    path = str(path)
    if is_remote(path):
        return pafs.FileSystem.from_uri(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def absolute(path: str | os.PathLike) -> str:
    """The URI unchanged, or the absolute form of a local path (Ray workers need absolute paths)."""
    return str(path) if is_remote(str(path)) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else str(Path(base, *parts))


def write_text(path: str, text: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def read_text(path: str) -> str:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def copy_dir(src_local: str, dest: str) -> None:
    """Copy a local folder's files to a local path or bucket URI."""
    fs, p = resolve(dest)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(str(Path(src_local).resolve()), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
