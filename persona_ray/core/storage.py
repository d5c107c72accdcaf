"""Local paths and s3:// URIs behind one small set of file operations.

S3 settings come from the standard environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), never from
configs, so no secret ends up in a YAML file or a log.

Whole-file reads and writes on S3 are retried with exponential backoff for up to
$PERSONA_RAY_S3_RETRY_S seconds (default 120), each try waiting at most $PERSONA_RAY_S3_TIMEOUT_S
(default 20): a stalled or restarting object store costs time, not the job. When the window is
spent, StorageError says which object and why.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
import uuid
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from persona_ray.core.errors import UserError, one_line

log = logging.getLogger(__name__)
S3_PREFIX = "s3://"
RETRY_ENV = "PERSONA_RAY_S3_RETRY_S"  # how long whole-file reads and writes keep retrying
DEFAULT_RETRY_S = 120.0
TIMEOUT_ENV = "PERSONA_RAY_S3_TIMEOUT_S"  # one request's connect / answer timeout
DEFAULT_TIMEOUT_S = 20.0


class StorageError(UserError):
    """An object could not be read or written within the retry window."""


def retry_window_s() -> float:
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S))


def _with_retries(action: str, uri: str, attempt, retry_s: float | None):
    """Run attempt() until it succeeds or `retry_s` seconds have passed (S3 only; local: once)."""
    if not is_s3(uri):
        return attempt()
    window = retry_window_s() if retry_s is None else retry_s
    started, delay, tries = time.monotonic(), 0.5, 0
    while True:
        tries += 1
        try:
            return attempt()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise  # answers, not stalls: retrying changes nothing
        except OSError as exc:
            spent = time.monotonic() - started
            if spent + delay > window:
                raise StorageError(
                    f"could not {action} {uri} after {tries} tries in {spent:.0f} s ({one_line(exc, 200)}). "
                    f"Fix: check the S3 endpoint and credentials, or allow longer with ${RETRY_ENV}; "
                    "a rerun resumes") from None
            log.warning("%s %s failed (%s); retrying in %.1f s", action, uri, one_line(exc, 120), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str, timeout_s: float) -> pafs.S3FileSystem:
    # One try per call, each bounded by timeout_s: the retries are ours (_with_retries), so the
    # time a stalled store may cost is exactly the configured window.
    kwargs: dict[str, Any] = {"region": region, "connect_timeout": timeout_s, "request_timeout": timeout_s,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it). S3 paths are "bucket/key", local ones absolute."""
    if is_s3(uri):
        fs = _s3_filesystem(os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                            float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        return fs, uri[len(S3_PREFIX):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def _to_uri(uri_like: str, path: str) -> str:
    return S3_PREFIX + path if is_s3(uri_like) else path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under a folder (recursively, sorted), or [uri] for a single file; [] if absent."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [uri]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    names = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and not os.path.basename(i.path).startswith((".", "_"))
        and (not suffixes or i.path.endswith(suffixes))
    )
    return [_to_uri(uri, name) for name in names]


def read_bytes(uri: str, retry_s: float | None = None) -> bytes:
    fs, path = filesystem(uri)

    def attempt() -> bytes:
        with fs.open_input_stream(path) as handle:
            return handle.read()

    return _with_retries("read", uri, attempt, retry_s)


def write_bytes(uri: str, data: bytes, retry_s: float | None = None) -> None:
    """Write a whole file so that readers see all of it or nothing.

    Locally: a hidden temporary file in the same folder, then an atomic rename.
    On S3 an object appears only when its upload completes, so a direct write is atomic.
    """
    fs, path = filesystem(uri)
    if is_s3(uri):
        def attempt() -> None:
            with fs.open_output_stream(path) as handle:
                handle.write(data)

        _with_retries("write", uri, attempt, retry_s)
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def upload_file(local_path: str, uri: str, retry_s: float | None = None) -> None:
    """Copy a local file to `uri` (local or s3://) in pieces, never all of it in memory; readers
    see all of it or nothing, as with write_bytes."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        def attempt() -> None:  # a multipart upload: the object appears when it completes
            pafs.copy_files(local_path, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

        _with_retries("write", uri, attempt, retry_s)
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    shutil.copyfile(local_path, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def write_parquet(table: pa.Table, uri: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes(uri, buffer.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(uri)), columns=columns)


def write_json(obj: Any, uri: str) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def copy_dir(src: str, dst: str) -> None:
    """Copy a folder's files between any two of local / s3:// (dst is replaced file by file)."""
    src_fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    if not is_s3(dst):
        os.makedirs(dst_path, exist_ok=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
