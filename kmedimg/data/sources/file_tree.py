"""`FileTreeSource`: the shared base of the importers that read a tree of files.

The DICOM and NIfTI importers differ in how they turn one file into items; the rest
is shared and lives here:

- Walking the tree (`walk_files`): every regular file under the root is an input.
  Symlinked directories are followed (hospital exports and test fixtures use them),
  each real directory once, so a link cycle cannot loop; the list is sorted by the
  `/`-separated relative path, so iteration order is the same on every machine.
- Labels: by class folder or by a label table (`LabelTable`), and the same `no label`
  reasons for files without one.
- Privacy (`privacy`): item names, record ids and rejected.csv use salted hashes of
  the relative path unless `keep_filenames=True`; rejection reasons are scrubbed of
  the file's path and name; the salt must live outside the dataset; the paths a
  conversion was called with (SRC, the labels CSV, the salt file) reach the manifest
  only as salted hashes (`redact_conversion_args`).
- Decoding in `workers` processes through an ordered, bounded map, so the output is
  identical for any worker count; a file whose worker dies becomes one `Rejected`.

A subclass names its worker function (`convert`, a module-level function of
`(path, relative, options)` returning a list of `Item`/`Rejected`), adds its own
options to `worker_options()`, and may count extra facts in `_count_item`.
"""

import collections
import logging
import os

from kmedimg.data.sources import privacy
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.label_table import LabelTable
from kmedimg.data.sources.parallel import check_workers, ordered_map

logger = logging.getLogger(__name__)


def walk_files(root, limit=None):
    """Sorted `(absolute_path, relative_path)` of the regular files under `root`.

    Args:
        root: the folder.
        limit: stop after this many files (for cheap format sniffing; the result is
            then not sorted globally). Defaults to `None` (all).
    """
    found = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            if os.path.isfile(path):
                found.append((path, os.path.relpath(path, root).replace(os.sep, "/")))
                if limit is not None and len(found) >= limit:
                    return found
    if limit is None:
        found.sort(key=lambda pair: pair[1])
    return found


def printable(relative):
    """`relative` as storable text: bytes of a non-UTF-8 name written as `\\xff`."""
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def item_name(options, relative):
    """What an item or rejection of the file `relative` is called: its relative path
    with `keep_filenames`, else a salted hash of it (file names may hold PHI)."""
    if options["keep_filenames"]:
        return printable(relative)
    return privacy.salted_hash(options["salt"], "file", relative)


def reject(name, reason, masks, one_line=False):
    """`[Rejected(name, reason)]` with every value of `masks` scrubbed from the reason.

    Args:
        name: the item name (see `item_name`).
        reason: why the file is not written.
        masks: values that must not appear (the path, the file name, PHI values).
        one_line: also collapse whitespace runs (multi-line decoder errors).
            Defaults to `False`.
    """
    reason = privacy.scrub(reason, masks)
    if one_line:
        reason = " ".join(reason.split())
    logger.debug("rejected %s: %s", name, reason)
    return [Rejected(name, reason)]


def no_label_reason(table):
    """The rejection reason of a file the label table has no label for."""
    if table.kind == "folders":
        return "no label: not inside a class folder"
    return f"no label: no row for its {table.key_column} in the labels CSV"


class FileTreeSource:
    """Base of the importers of a folder tree (see the module docstring).

    Args:
        root: folder searched recursively; every regular file is an input.
        labels: `"folders"` or the path of a label CSV. Defaults to `"folders"`.
        class_names: class order; defaults to the sorted names found.
        task: inferred when None.
        label_keys: the key columns a label CSV may use.
        salt: salt of the patient-key and id hashes (str/bytes); None reads or
            creates `salt_file`.
        salt_file: where the salt is kept (outside the dataset); None means
            `~/.kmedimg/patient_salt`.
        keep_filenames: use relative paths (may hold PHI!) instead of hash ids.
        workers: decoding processes; None/0 = all CPUs, 1 = in this process.
        prefetch: files in flight per worker (bounds memory).
    """

    #: What the format is called in messages ("DICOM").
    title = "file tree"
    #: Reason of a file whose worker process died.
    crash_reason = "reader crashed: the worker process died while reading this file"

    def __init__(self, root, *, labels, class_names, task, label_keys, salt, salt_file,
                 keep_filenames, workers, prefetch):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"{self.title} source folder not found: {self.root}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"`prefetch` must be an int >= 1. Received: prefetch={prefetch!r}")
        self.keep_filenames = bool(keep_filenames)
        self.workers = check_workers(workers)
        self.prefetch = prefetch
        self.salt_file = salt_file
        self._salt = privacy.load_salt(salt, salt_file)
        if labels == "folders":
            self.label_table = LabelTable.from_folders(self.root, class_names, task)
        else:
            self.label_table = LabelTable.from_csv(labels, class_names, task,
                                                   allowed_keys=label_keys)
        self.task = self.label_table.task
        self.class_names = self.label_table.class_names
        self._stats = collections.Counter()

    @classmethod
    def from_spec(cls, spec, **options):
        return cls(spec, **options)

    # Called by `kmedimg convert` before converting: the salt must live outside OUT.
    check_options = staticmethod(privacy.check_salt_options)

    @staticmethod
    def convert(job):
        """Worker: `(path, relative, options)` -> list of `Item`/`Rejected`."""
        raise NotImplementedError

    def files(self):
        """Sorted `(absolute_path, relative_path)` of every input file under the root."""
        return walk_files(self.root)

    def worker_options(self):
        """The picklable options every worker call receives."""
        return {"salt": self._salt, "keep_filenames": self.keep_filenames,
                "labels": self.label_table}

    def _crashed(self, job):
        _, relative, options = job
        return [Rejected(item_name(options, relative), self.crash_reason)]

    def _start_pass(self):
        """Resets what one pass over the files collects."""
        self._stats = collections.Counter()

    def _count_item(self, item):
        """Counts a format's facts of one written item (in `self._stats`)."""

    def __iter__(self):
        options = self.worker_options()
        jobs = ((path, relative, options) for path, relative in self.files())
        self._start_pass()
        stats = self._stats
        for entries in ordered_map(type(self).convert, jobs, self.workers, self.prefetch,
                                   on_crash=self._crashed):
            stats["files"] += 1
            for entry in entries:
                if isinstance(entry, Item):
                    stats["items"] += 1
                    self._count_item(entry)
                else:
                    stats["rejected_files"] += 1
                yield entry

    def redact_conversion_args(self, args):
        """The conversion's arguments as the manifest may keep them (called by the writer).

        Hospital exports name folders after patients (`export_DOE_JOHN_MRN998877/`), so
        unless `keep_filenames` is set, `src` and the path options become None and a
        salted hash of each is kept as `<name>_hash` (same salt, same path -> same hash).

        Args:
            args: dict with `src` and `source_options`, as `convert_source` builds it.

        Returns:
            a new dict.
        """
        if self.keep_filenames:
            return args
        args = dict(args)
        options = dict(args.get("source_options") or {})
        for holder, key in ((args, "src"), (options, "labels"), (options, "salt_file")):
            value = holder.get(key)
            if value is None or (key == "labels" and value == "folders"):
                continue
            holder[key] = None
            holder[f"{key}_hash"] = privacy.salted_hash(self._salt, key, os.fspath(value))
        if "source_options" in args:
            args["source_options"] = options
        return args

    def _describe_privacy(self, patient_rule):
        return {
            "patient": patient_rule,
            "salt_fingerprint": privacy.salt_fingerprint(self._salt),
            "keep_filenames": self.keep_filenames,
        }

    def _described_window(self):
        window = getattr(self, "window", None)
        if isinstance(window, tuple):
            window = {"name": window[0], "center": window[1], "width": window[2]}
        return window
