"""Keeping protected health information (PHI) out of records, manifests and logs.

What the medical importers (DICOM, NIfTI) write instead of identifying values:

- Patient key: `sha256(salt + "\\0" + kind + "\\0" + value)` truncated to 16 hex digits,
  where `value` is the DICOM PatientID (or, when a file has none, its StudyInstanceUID,
  or else the file itself; `kind` says which, so keys of different kinds never collide).
  The salt makes the key useless for a dictionary attack on patient IDs; keep it
  secret and keep it OUTSIDE the dataset directory. The same salt gives the same keys
  across conversions, which keeps patient-level splits consistent between datasets.
- Record ids and the `source` column of records/rejected.csv: a salted hash of the
  file's path relative to the source root (plus the frame/slice index), unless the
  user asks for `keep_filenames` (file names in hospital exports often hold names).
- Error reasons: the file's path and name and any PHI value read from the file are
  masked before a reason reaches rejected.csv or a log line (`scrub`); code values
  are echoed only from an allow-list of defined terms, others by kind and hash.
- The manifest's record of the call (`conversion.args`): SRC, the labels CSV and the
  salt file's paths are kept as salted hashes (`src_hash`, ...), not as paths.
- Salt files: text files give their stripped UTF-8 text, binary files their bytes.
"""

import contextlib
import hashlib
import logging
import os
import warnings
import pathlib
import secrets

#: Where a generated salt is kept when the user gives none (per user, outside any dataset).
DEFAULT_SALT_FILE = pathlib.Path(
    os.environ.get("KMEDIMG_SALT_FILE", pathlib.Path.home() / ".kmedimg" / "patient_salt")
)
MASK = "<masked>"


def load_salt(salt=None, salt_file=None):
    """Returns the salt (bytes) given directly, read from `salt_file`, or generated into it.

    Args:
        salt: the salt itself (str or bytes). Wins over `salt_file`. Defaults to `None`.
        salt_file: file holding the salt; created (mode 0600, 32 random bytes as hex)
            when missing. Defaults to `None`, meaning `DEFAULT_SALT_FILE`
            (`~/.kmedimg/patient_salt`, or `$KMEDIMG_SALT_FILE`).

    A text file gives its stripped text (UTF-8); any other file its bytes as they are.

    Raises:
        ValueError: when the salt is empty or the salt file cannot be read.
    """
    if salt is not None:
        salt = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
        if not salt:
            raise ValueError("`salt` must not be empty. Received: salt=''")
        return salt
    path = pathlib.Path(salt_file) if salt_file is not None else DEFAULT_SALT_FILE
    if path.exists():
        return _read_salt_file(path)
    text = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created meanwhile by a concurrent conversion: use it
            return _read_salt_file(path)
    except OSError as error:
        raise ValueError(
            f"Cannot create the salt file {str(path)!r}: {error.strerror}. Choose a "
            f"writable place outside the dataset (--salt-file). Received: "
            f"salt_file={str(path)!r}"
        ) from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return text.encode("utf-8")


def _read_salt_file(path):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(
            f"Cannot read the salt file {str(path)!r}: {error.strerror}. Give a readable "
            f"file (--salt-file), or a new path to create one. Received: salt_file={str(path)!r}"
        ) from None
    try:
        salt = data.decode("utf-8").strip().encode("utf-8")
    except UnicodeDecodeError:
        salt = data  # a binary salt: every byte counts
    if not salt:
        raise ValueError(
            f"The salt file {str(path)!r} is empty. Delete it to generate a new salt. "
            f"Received: salt_file={str(path)!r}"
        )
    return salt


def check_salt_outside(salt_file, out_dir):
    """Raises ValueError when `salt_file` lies inside the dataset directory `out_dir`."""
    if salt_file is None or out_dir is None or "://" in str(out_dir):
        return
    salt_path = pathlib.Path(salt_file).expanduser().resolve()
    out_path = pathlib.Path(out_dir).expanduser().resolve()
    if salt_path == out_path or out_path in salt_path.parents:
        raise ValueError(
            "The patient-key salt must be stored outside the output directory (whoever "
            "gets the dataset must not get the salt). Choose another --salt-file. "
            f"Received: salt_file={str(salt_file)!r}, out_dir={str(out_dir)!r}"
        )


def salted_hash(salt, *parts):
    """16 hex digits of sha256 over the salt and the parts (str/bytes/int)."""
    digest = hashlib.sha256(salt)
    for part in parts:
        digest.update(b"\0")
        # surrogateescape: a non-UTF-8 file name hashes as its raw bytes instead of failing
        digest.update(part if isinstance(part, bytes)
                      else str(part).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def salt_fingerprint(salt):
    """A short public fingerprint of the salt: tells whether two datasets share a salt."""
    return hashlib.sha256(b"kmedimg-salt-fingerprint\0" + salt).hexdigest()[:12]


def scrub(text, secrets_to_mask):
    """Returns `text` with every value of `secrets_to_mask` (len >= 2) replaced by a mask.

    Longer values are masked first, so a value containing another is masked whole.
    """
    text = str(text)
    for value in sorted({str(v) for v in secrets_to_mask if v is not None}, key=len, reverse=True):
        if len(value.strip()) >= 2 and value in text:
            text = text.replace(value, MASK)
    return text


@contextlib.contextmanager
def silenced(*logger_names):
    """Silences the named loggers and all warnings (readers log paths and values)."""
    loggers = [logging.getLogger(name) for name in logger_names]
    previous = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, state in zip(loggers, previous):
            logger.disabled = state


def check_salt_options(options, out_dir):
    """Refuses a salt file inside the output directory unless an explicit salt is given.

    Args:
        options: the importer's keyword options (`salt`, `salt_file`).
        out_dir: the conversion's output directory.
    """
    salt_file = options.get("salt_file") or DEFAULT_SALT_FILE
    if options.get("salt") is None:
        check_salt_outside(salt_file, out_dir)
