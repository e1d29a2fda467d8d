"""A conversion's output directory: its checks, its lock, write errors, file hashing.

Everything goes through `tf.io.gfile`, so the output directory may be local or gs://.
Paths are joined with `kmedimg.core.run_directory.join`.

A conversion holds `OutputLock` on its output directory from start to end. Locally
the lock is an `flock` on `OUT/.kmedimg-convert.lock`, which the kernel releases
when the holder dies (even by SIGKILL), so a lock is never stale; on gs:// it is
that file's existence (best effort: a killed conversion leaves it, and the error
says to delete it). Because every conversion holds the lock while its
`.incomplete-*` temporary directory exists, a temporary directory found by the
holder of the lock belongs to a dead conversion and is removed.
"""

import contextlib
import datetime
import hashlib
import os
import socket

import tensorflow as tf

from kmedimg.core.run_directory import join

try:
    import fcntl
except ImportError:  # not POSIX: fall back to the best-effort lock of remote paths
    fcntl = None

LOCK_NAME = ".kmedimg-convert.lock"
TEMP_PREFIX = ".incomplete-"

_CHUNK_BYTES = 8 * 1024 * 1024
_LISTED_ENTRIES = 5


class ConversionError(OSError):
    """A conversion could not write its output: disk full, directory in use, ...

    The message names the output directory and the cause, and says what was kept.
    """


def sha256_of(path):
    """Hex sha256 of a file, read in chunks through tf.io.gfile."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def is_local(path):
    """True for a path on this machine (no `scheme://`)."""
    return "://" not in str(path)


@contextlib.contextmanager
def writing(out_dir):
    """Turns a failed write under `out_dir` (disk full, ...) into a `ConversionError`.

    Wrap only output operations in it: a source's own read errors are not write
    failures.
    """
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        if isinstance(error, ConversionError):
            raise
        reason = getattr(error, "message", None) or str(error)
        if isinstance(error, OSError) and error.strerror:
            reason = f"{error.filename or out_dir}; {error.strerror}"
        failure = ConversionError(
            f"Could not write the dataset in {out_dir}: {reason}. Nothing was replaced: "
            "a previous dataset in the directory is kept. Free space (or fix the cause) "
            f"and convert again. Received: out_dir={out_dir!r}"
        )
        failure.errno = getattr(error, "errno", None)
        raise failure from error


def check_output_directory(out_dir):
    """Raises ValueError when `out_dir` exists and is not a directory."""
    if tf.io.gfile.exists(out_dir) and not tf.io.gfile.isdir(out_dir):
        raise ValueError(
            f"The output directory {out_dir} is a file. Choose a directory (it is "
            f"created if missing). Received: out_dir={out_dir!r}"
        )


def check_not_inside(out_dir, src):
    """Raises ValueError when `out_dir` is the directory `src` or lies inside it.

    A conversion that writes into the folder it reads would read its own output.
    Only local directories are compared (after resolving symlinks).
    """
    if not (is_local(out_dir) and is_local(src) and os.path.isdir(src)):
        return
    source = os.path.realpath(src)
    output = os.path.realpath(out_dir)
    if output == source or output.startswith(source.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"The output directory {out_dir} is inside the source folder {src}: the "
            "conversion would read its own output. Choose an output directory outside "
            f"the source. Received: out_dir={out_dir!r}, src={src!r}"
        )


def check_output_contents(out_dir, overwrite):
    """Raises ValueError when `out_dir` holds anything and `overwrite` is False.

    The lock and stale temporary directories are not counted (they are ours).
    """
    if overwrite or not tf.io.gfile.isdir(out_dir):
        return
    entries = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(out_dir))
    entries = [name for name in entries
               if name != LOCK_NAME and not name.startswith(TEMP_PREFIX)]
    if not entries:
        return
    listed = ", ".join(entries[:_LISTED_ENTRIES])
    if len(entries) > _LISTED_ENTRIES:
        listed += f" and {len(entries) - _LISTED_ENTRIES} more"
    holds = "a dataset" if "dataset.json" in entries else "files"
    raise ValueError(
        f"The output directory {out_dir} is not empty: it holds {holds} ({listed}). "
        "Pass overwrite=True (CLI: --overwrite) to replace the dataset in it (other "
        f"files are kept), or choose a new or empty directory. Received: out_dir={out_dir!r}"
    )


def remove_stale_temporaries(out_dir):
    """Removes the `.incomplete-*` directories of dead conversions (hold the lock!)."""
    removed = []
    for name in tf.io.gfile.listdir(out_dir):
        name = name.rstrip("/")
        if name.startswith(TEMP_PREFIX):
            tf.io.gfile.rmtree(join(out_dir, name))
            removed.append(name)
    return removed


def _holder_description():
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n"


class OutputLock:
    """The lock of one conversion on its output directory (a context manager).

    Args:
        out_dir: the output directory (must exist).

    Raises:
        ConversionError: on entry, when another conversion holds the lock.
    """

    def __init__(self, out_dir):
        self.out_dir = str(out_dir)
        self.path = join(self.out_dir, LOCK_NAME)
        self.descriptor = None

    def _uses_flock(self):
        return is_local(self.out_dir) and fcntl is not None

    def __enter__(self):
        if self._uses_flock():
            self._acquire_flock()
        else:
            self._acquire_file()
        return self

    def __exit__(self, *exc_info):
        if self.descriptor is not None:
            # Unlink while still holding the lock, so no one locks the removed file.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self.descriptor)
            self.descriptor = None
        elif tf.io.gfile.exists(self.path):
            tf.io.gfile.remove(self.path)

    def _held_error(self, holder):
        holder = holder.strip() or "a process that has not written its pid yet"
        stale = ("" if self._uses_flock()
                 else f" If no conversion is running, delete {self.path}.")
        return ConversionError(
            f"The output directory {self.out_dir} is being written by another "
            f"conversion: {self.path} is held by {holder}. Wait for it to finish (or "
            f"stop it) and convert again, or choose another output directory.{stale} "
            f"Received: out_dir={self.out_dir!r}",
        )

    def _acquire_flock(self):
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(descriptor, 4096).decode("utf-8", "replace")
                os.close(descriptor)
                raise self._held_error(holder) from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(descriptor)  # the holder removed it as we opened it: lock anew
        os.ftruncate(descriptor, 0)
        os.write(descriptor, _holder_description().encode())
        self.descriptor = descriptor

    def _acquire_file(self):
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path, "r") as handle:
                raise self._held_error(handle.read())
        with tf.io.gfile.GFile(self.path, "w") as handle:
            handle.write(_holder_description())
