"""`Registry`: one module-level dict of named entries, filled by an explicit decorator.

Used for backbones, recipes, data sources and tuners, so that each of them raises the
same errors: registering a name twice is a `ValueError`, and a failed lookup lists the
registered names and suggests the nearest one.

Example:

```python
SOURCES = Registry("source")

@SOURCES.register("folder")
class FolderSource:
    ...

SOURCES.get("folder")      # -> FolderSource
SOURCES.get("foldr")       # ValueError: Unknown source 'foldr'. Did you mean 'folder'? ...
```
"""

import difflib


class Registry:
    """A named mapping filled by `register` and read by `get`.

    Args:
        kind: what the entries are, used in error messages (`"backbone"`).
        argument: the user-facing argument name a lookup resolves, used in the
            `Received:` part of errors. Defaults to `kind`.
    """

    def __init__(self, kind, argument=None):
        self.kind = kind
        self.argument = argument or kind
        self._entries = {}

    def register(self, name, entry=None):
        """Registers `entry` under `name`; without `entry`, returns a decorator.

        Raises:
            ValueError: when `name` is already registered.
        """
        if entry is None:
            def decorator(value):
                self.register(name, value)
                return value

            return decorator
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string. Received: name={name!r}")
        if name in self._entries:
            raise ValueError(
                f"A {self.kind} named {name!r} is already registered; choose another name. "
                f"Received: name={name!r}"
            )
        self._entries[name] = entry
        return entry

    def get(self, name):
        """The entry registered as `name`.

        Raises:
            ValueError: naming the registered entries (and the nearest one) when
                `name` is unknown.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown_message(name)) from None

    def unknown_message(self, name):
        """The error text for an unknown `name`: registered names and a suggestion."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"Unknown {self.kind} {name!r}.{hint} Registered: {', '.join(names)}. "
            f"Received: {self.argument}={name!r}"
        )

    def names(self):
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self):
        """`(name, entry)` pairs in name order."""
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name):
        return name in self._entries

    def __len__(self):
        return len(self._entries)

    def __iter__(self):
        return iter(self.names())
