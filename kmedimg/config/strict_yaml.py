"""Strict YAML for recipe files: no Python tags, no duplicate keys, no alias bombs.

`yaml.safe_load` already refuses `!!python/...` tags, but it lets a repeated key
silently replace the first one (`seed: 1` then `seed: 2` trains with seed 2), and
an alias bomb (anchors whose aliases nest: a few lines that expand to billions of
values) loads quickly but hangs whatever walks the values afterwards. `load_yaml`
composes the document first, checks the node graph (duplicate keys with both line
numbers; recursion; the number of values after expanding every alias), and only then
builds the Python values.
"""

import yaml

#: Values (mapping entries, list items, scalars) a document may hold once every alias
#: is expanded. A recipe has a few hundred; an alias bomb has billions.
MAX_EXPANDED_VALUES = 10_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(node):
    return node.start_mark.line + 1


class _GraphCheck:
    """One walk over a composed node graph: duplicates, recursion, expanded size."""

    def __init__(self, where):
        self.where = where
        self.sizes = {}  # id(node) -> values under it, aliases expanded
        self.open = set()  # ids of the nodes being walked (a revisit is recursion)

    def size(self, node, path=""):
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            raise ValueError(
                f"{self.where}: line {_line(node)}: `{path or 'document'}` is a recursive "
                "alias (a value that contains itself); a recipe value must be finite. "
                "Remove the alias."
            )
        self.open.add(key)
        total = 1 + sum(self.size(child, child_path)
                        for child, child_path in self._children(node, path))
        self.open.discard(key)
        if total > MAX_EXPANDED_VALUES:
            raise ValueError(
                f"{self.where}: its aliases (`*name`) expand to more than "
                f"{MAX_EXPANDED_VALUES} values (an alias bomb?); a recipe needs a few "
                f"hundred. Write the values out or use fewer aliases. Received: "
                f"`{path or 'document'}` expands to {total} values"
            )
        self.sizes[key] = total
        return total

    def _children(self, node, path):
        if isinstance(node, yaml.SequenceNode):
            return [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            return []
        self._check_duplicates(node, path)
        children = []
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            child_path = f"{path}.{name}" if path else str(name)
            children += [(key_node, child_path), (value_node, child_path)]
        return children

    def _check_duplicates(self, node, path):
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            identity = (key_node.tag, key_node.value)
            if identity in seen:
                name = f"{path}.{key_node.value}" if path else key_node.value
                raise ValueError(
                    f"{self.where}: duplicate key `{name}`; YAML would silently keep only "
                    f"the last one. Remove one of them. Received: `{key_node.value}` on "
                    f"lines {seen[identity]} and {_line(key_node)}"
                )
            seen[identity] = _line(key_node)


def load_yaml(text, where):
    """Parses one YAML document strictly (see the module docstring).

    Args:
        text: the YAML text.
        where: the file (or `--set` argument) named in errors.

    Returns:
        The parsed value (`None` for an empty document).

    Raises:
        ValueError: naming `where` on invalid YAML, a Python tag, a duplicate key, a
            recursive alias or a document whose aliases expand past
            `MAX_EXPANDED_VALUES` values.
    """
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks the characters already
        node = loader.get_single_node()
        if node is None:
            return None
        _GraphCheck(where).size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as problem:
        message = " ".join(str(problem).split())
        raise ValueError(f"{where}: not valid YAML ({message}).") from problem
    except RecursionError as problem:
        raise ValueError(
            f"{where}: not valid YAML (values nested too deeply for a recipe)."
        ) from problem
    finally:
        if loader is not None:
            loader.dispose()
