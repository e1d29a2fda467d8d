"""The explicit registry of importers: format name -> Source class.

A format registers its class with `@register_source("name")` (a
`kmedimg.core.Registry`); the modules that do so are imported by name in
`kmedimg/data/sources/__init__.py` (the one list to extend). Each class may define a
static `sniff(spec) -> int` scoring how well it recognises a path or spec without
being told the format (0 = not mine); `open_source` picks the highest score, so a
specialised importer (e.g. a folder of DICOM files) can outrank the generic folder
importer by returning a larger score.
"""

import os

from kmedimg.core.registry import Registry

SOURCES = Registry("source format", argument="format")


def register_source(name):
    """Class decorator registering an importer under `name`.

    Args:
        name: the format name used by `open_source(..., format=name)` and
            `kmedimg convert --format name`.

    Raises:
        ValueError: when `name` is already registered.

    Example:

    ```python
    @register_source("myformat")
    class MyFormatSource:
        ...
    ```
    """

    def decorator(cls):
        SOURCES.register(name, cls)
        cls.format_name = name
        return cls

    return decorator


def list_sources():
    """Sorted names of the registered source formats."""
    return SOURCES.names()


def get_source_class(name):
    """The class registered for format `name`.

    Raises:
        ValueError: listing the registered formats when `name` is unknown.
    """
    return SOURCES.get(name)


def detect_format(spec):
    """Guesses the format of `spec` (a path or a `scheme:` string) from the registry.

    Raises:
        FileNotFoundError: `spec` is a path that does not exist.
        ValueError: no registered format (or more than one equally) recognises it.
    """
    spec = os.fspath(spec)
    scores = {}
    for name, cls in SOURCES.items():
        sniff = getattr(cls, "sniff", None)
        score = sniff(spec) if sniff else 0
        if score:
            scores[name] = score
    if not scores:
        if ":" not in spec and not os.path.exists(spec):
            raise FileNotFoundError(f"Source not found: {spec}")
        raise ValueError(
            "Cannot tell the source format from the path; pass format= (CLI: --format). "
            f"Registered formats: {list_sources()}. Received: spec={spec!r}"
        )
    best = max(scores.values())
    winners = sorted(name for name, score in scores.items() if score == best)
    if len(winners) > 1:
        raise ValueError(
            f"The source matches several formats {winners}; pass format= (CLI: --format). "
            f"Received: spec={spec!r}"
        )
    return winners[0]


def open_source(spec, format=None, **options):
    """Opens an importer for `spec`.

    Args:
        spec: a directory (class-per-folder tree), a `.csv`, a MedMNIST `.npz`,
            `tfds:NAME`, `synthetic:N`, or any spec a registered format recognises.
        format: the format name (see `list_sources()`); detected from `spec` when None.
            Defaults to `None`.
        **options: keyword arguments for the format's class.

    Returns:
        A `Source` (iterable of `Item`/`Rejected` with `task`, `class_names`,
        `describe()`).

    Example:

    ```python
    source = open_source("data/brain_mri", channels=1)
    source = open_source("pneumoniamnist.npz")
    ```
    """
    name = format or detect_format(spec)
    cls = get_source_class(name)
    factory = getattr(cls, "from_spec", cls)
    return factory(os.fspath(spec), **options)
