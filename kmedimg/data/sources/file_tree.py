"""Listing every input file under a root, the same way for the medical importers.

Symlinked directories are followed (hospital exports and test fixtures use them), each
real directory once, so a link cycle cannot loop; the list is sorted by the
`/`-separated relative path, so iteration order is the same on every machine.
"""

import os


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
