"""`--set` overrides: `section.key=value` strings applied to a parsed recipe file."""

import copy

from kmedimg.config.strict_yaml import load_yaml


def parse_override(text):
    """Splits a `--set` override `section.key=value` into (["section", "key"], value).

    The value is parsed as a YAML scalar or flow collection, so `0.1`, `true`, `null`,
    `[64, 64]` and `{a: 1}` have their YAML types; anything else is a string.
    """
    if "=" not in text:
        raise ValueError(
            "An override must look like `section.key=value`, e.g. "
            f"`training.seed=3`. Received: --set {text!r}"
        )
    key, raw_value = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ValueError(
            f"An override key must be dotted, e.g. `training.seed`. Received: --set {text!r}"
        )
    value = load_yaml(raw_value, f"--set {text!r}") if raw_value.strip() else ""
    return parts, value


def apply_overrides(raw, overrides):
    """Returns a copy of the parsed YAML `raw` with `section.key=value` overrides set."""
    raw = copy.deepcopy(raw) if raw else {}
    for text in overrides or []:
        parts, value = parse_override(text)
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ValueError(
                    f"--set {text!r}: `{prefix}` is a value, not a section. "
                    f"Received: {prefix}={child!r}"
                )
            node = child
        node[parts[-1]] = value
    return raw
