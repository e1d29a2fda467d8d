"""Class-per-folder image trees: `root/<class>/**/<image>`."""

import os

from kmedimg.data.sources import image_files
from kmedimg.data.sources.base import (Item, Rejected, check_class_names, is_utf8_name,
                                         printable_name)
from kmedimg.data.sources.registry import register_source


def _not_regular_reason(entry):
    """Why a non-folder entry cannot be read as an image file, or None when it can."""
    if entry.is_file():
        return None
    if entry.is_symlink():
        return "broken symbolic link: its target does not exist"
    # A FIFO would block the reader forever; sockets and devices are no images either.
    return "not a regular file (a FIFO, socket or device)"


@register_source("folder")
class FolderSource:
    """Images in a class-per-folder tree, one item at a time.

    Every immediate, non-hidden sub-folder of `root` is a class (sorted by name unless
    `classes` gives the order); its files, at any depth, are the class's images.
    Files are recognised by content (PNG, JPEG, BMP, TIFF), so a PNG named `.jpg` is
    fine. Every file under a class folder becomes an `Item` or a `Rejected` with the
    reason (not an image, unsupported format, truncated, multi-frame, ...); files
    lying directly in `root` are rejected as "outside any class folder", files whose
    names are not UTF-8 as such (shown with `\\x` escapes). Symlinked sub-folders are
    followed when they stay inside `root`; one that leaves it or loops is rejected
    with the reason. Hidden
    folders in `root` (`.git`, `.ipynb_checkpoints`) and folders left out by `classes`
    are not read and are listed in `describe()["ignored_directories"]`.

    Channel and bit-depth policy (see `kmedimg.data.sources.image_files`): with
    `channels="auto"` the tree becomes 1-channel when every image is grey-ish (grey
    modes, or colour files whose channels differ by at most `grey_tolerance` on
    average) and 3-channel otherwise; alpha is composited onto black; palette images
    are expanded. `"auto"` costs one extra, reduced-size decoding pass over the files,
    done once and cached; pass `channels=1` or `3` to skip it.

    Args:
        root: the tree's root directory.
        classes: class folder names to read, in label order. Defaults to `None`
            (every non-hidden sub-folder, sorted).
        channels: `"auto"`, 1 or 3. Defaults to `"auto"`.
        dtype: `"auto"` (uint16 when every image is 16-bit, else uint8), `"uint8"` or
            `"uint16"`. Defaults to `"auto"`.
        grey_tolerance: mean channel deviation (0..255 scale) up to which a colour
            image counts as grey for `channels="auto"`. Defaults to `8.0`.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: `root` holds no class folders, fewer than two, empty class folders,
            or `classes` names a folder that does not exist.

    Example:

    ```python
    source = FolderSource("brain_tumor_mri_yes_no", channels=1)
    source.class_names  # ['no', 'yes']
    items = [item for item in source if isinstance(item, Item)]
    ```
    """

    def __init__(self, root, classes=None, channels="auto", dtype="auto", grey_tolerance=8.0):
        root = os.fspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(f"Image folder not found: {root}")
        if not os.path.isdir(root):
            raise ValueError(
                f"`root` must be a directory of class folders. Received: root={root!r}"
            )
        self.root = root
        self.channels = image_files.check_channels(channels)
        self.dtype = image_files.check_dtype(dtype)
        self.grey_tolerance = float(grey_tolerance)
        self._resolved = None

        entries = sorted(os.listdir(root))
        folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
        visible = [f for f in folders if not f.startswith(".")]
        # Everything else directly in root (hidden files too, e.g. .DS_Store; broken
        # links) is listed as rejected.
        self._stray_files = [e for e in entries if e not in folders]
        if classes is None:
            classes = visible
        else:
            classes = [str(name) for name in classes]
            missing = [name for name in classes if name not in folders]
            if missing:
                raise ValueError(
                    f"{root}: `classes` names folders that do not exist: {missing}. "
                    f"Folders present: {visible}. Received: classes={classes}"
                )
            if len(set(classes)) != len(classes):
                raise ValueError(f"`classes` has repeated names. Received: classes={classes}")
        if not classes:
            raise ValueError(
                f"{root}: no class folders found; expected root/<class>/<image files>. "
                f"Received: root={root!r} holding {len(entries)} entries"
            )
        if len(classes) < 2:
            raise ValueError(
                f"{root}: a classification tree needs at least 2 class folders. "
                f"Received: classes={classes}"
            )
        check_class_names(classes, f"{printable_name(root)} (class folders)")
        empty = [name for name in classes if not self._has_files(name)]
        if empty:
            raise ValueError(
                f"{root}: class folders with no files: {empty}. Remove them or pass "
                f"`classes` without them (CLI: --classes). Received: classes={classes}"
            )
        self.class_names = list(classes)
        self.task = "binary" if len(classes) == 2 else "multiclass"
        self.ignored_directories = [f for f in folders if f not in self.class_names]

    @classmethod
    def from_spec(cls, spec, **options):
        return cls(spec, **options)

    @staticmethod
    def sniff(spec):
        return 1 if os.path.isdir(spec) else 0

    def _has_files(self, class_name):
        return next(self._walk(class_name), None) is not None

    def _walk(self, class_name):
        """Yields `(relative, path, reason)` under a class folder: files to read
        (`reason` None) and entries refused with their reason, in a stable order
        (a folder's files, then its sub-folders, each sorted by name).

        Symlinked sub-folders are followed when they point inside the source folder
        (or inside the class folder's own target, when the class folder is a link);
        one that leaves it, or leads to a folder already read (a link loop), is
        refused with the reason, never dropped silently.
        """
        class_root = os.path.join(self.root, class_name)
        allowed = (os.path.realpath(self.root), os.path.realpath(class_root))
        read = {os.path.realpath(class_root)}
        stack = [class_root]
        while stack:
            directory = stack.pop()
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
            folders = []
            for entry in entries:
                relative = os.path.relpath(entry.path, self.root).replace(os.sep, "/")
                if not entry.is_dir():
                    yield relative, entry.path, _not_regular_reason(entry)
                    continue
                real = os.path.realpath(entry.path)
                reason = None
                if entry.is_symlink() and not any(
                        real == top or real.startswith(top + os.sep) for top in allowed):
                    reason = ("symlinked folder points outside the source folder; copy its "
                              "files in or link them from inside the source folder")
                elif real in read:
                    reason = ("symlinked folder leads to a folder already read (a link "
                              "loop or a second link to it); its files are not read twice")
                if reason is not None:
                    yield relative, entry.path, reason
                    continue
                read.add(real)
                folders.append(entry.path)
            stack.extend(reversed(folders))

    def _files(self):
        """Yields `(relative_path, absolute_path, class_name, reason)` in a stable order;
        `reason` is None for a file to read, else why the entry is refused."""
        for class_name in self.class_names:
            for relative, path, reason in self._walk(class_name):
                if reason is None and not is_utf8_name(relative):
                    relative = printable_name(relative)
                    reason = ("file name is not valid UTF-8 (shown with \\x escapes); rename "
                              "it, e.g. with `convmv -f latin1 -t utf8`")
                yield relative, path, class_name, reason

    def resolve(self):
        """The `(channels, dtype)` actually written (runs the `"auto"` scan once)."""
        if self._resolved is None:
            paths = (path for _, path, _, reason in self._files() if reason is None)
            self._resolved = image_files.scan(
                paths, self.channels, self.dtype, self.grey_tolerance
            )
        return self._resolved

    def __iter__(self):
        channels, dtype = self.resolve()
        for name in self._stray_files:
            yield Rejected(printable_name(name), "file outside any class folder")
        for relative, path, class_name, reason in self._files():
            if reason is not None:
                yield Rejected(relative, reason)
                continue
            try:
                pixels = image_files.load(path, channels, dtype)
            except image_files.ImageFileError as error:
                yield Rejected(relative, str(error))
                continue
            yield Item(source=relative, pixels=pixels, labels=(class_name,))

    def describe(self):
        channels, dtype = self.resolve()
        return {
            "format": "folder",
            "root": os.path.abspath(self.root),
            "classes": list(self.class_names),
            "channels": channels,
            "dtype": dtype,
            "channel_policy": self.channels,
            "dtype_policy": self.dtype,
            "grey_tolerance": self.grey_tolerance,
            "ignored_directories": list(self.ignored_directories),
        }
