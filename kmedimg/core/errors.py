"""The errors kmedimg raises for problems a user can fix (bad input, refused files).

`KmedimgError` is the base of the expected failures: the `kmedimg` command prints
their message as one line (no traceback; `kmedimg --debug COMMAND` shows it) and
exits with their `exit_code`. The subclasses that concern one value of user input
are also `ValueError`s, so code catching `ValueError` keeps working.

Example:

```python
try:
    pixels = read_pixels("scan.dcm")
except InputFileError as error:
    print(error.path, error.reason)
```
"""


class KmedimgError(Exception):
    """An expected failure with a message that names the file/argument and the fix.

    Attributes:
        exit_code: the `kmedimg` command's exit status for this failure (2).
    """

    exit_code = 2


class InputFileError(KmedimgError, ValueError):
    """One input file (image, `.npy`, DICOM) cannot be used; the message names it.

    Args:
        path: the input file.
        reason: why it cannot be used, with the fix when there is one.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")


class ModelFileError(KmedimgError, ValueError):
    """A model file is refused (unsafe or unknown class) or is not a `.keras` archive."""


class ExportCheckError(KmedimgError):
    """An export's predictions differ from the Keras model's beyond the stated tolerance.

    Attributes:
        record: the export record (with its `check`), also written as `export.json`.
    """

    exit_code = 3

    def __init__(self, message, record=None):
        self.record = record
        super().__init__(message)
