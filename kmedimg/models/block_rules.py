"""How a backbone's layers are grouped into the blocks that `freeze_depth` counts.

Blocks are assigned from the backbone's own layer order (`model.layers` is
topologically sorted): a rule names the layers that start (or end) each block and
every other layer inherits the block of the layer before it. That works for
families whose branch layers carry no stable names (Inception's `conv2d_17`):
each block ends in a choke point that all later layers descend from.

The three rules are small strategies of one protocol (`names`, `assign(layers)`),
kept together so they can be read side by side.
"""

import re

class PatternBlocks:
    """Blocks named by regular expressions on layer names.

    Each layer goes to the first block whose pattern matches the start of its
    name (`re.match`); a layer no pattern matches (auto-named padding,
    activations, shortcuts) inherits the block of the layer before it.

    Args:
        patterns: ordered `(block_name, regex)` pairs.
    """

    def __init__(self, patterns):
        self.patterns = [(name, re.compile(pattern)) for name, pattern in patterns]
        self.names = tuple(name for name, _ in patterns)

    def assign(self, layer_list):
        assigned, current = [], self.names[0]
        for layer in layer_list:
            for name, pattern in self.patterns:
                if pattern.match(layer.name):
                    current = name
                    break
            assigned.append(current)
        return assigned


class MarkerBlocks:
    """Blocks delimited by marker layers, in order.

    Args:
        first: name of the first block (the stem).
        markers: ordered `(block_name, kind, pattern)`: `kind="at"` starts the
            block at the layer whose name fully matches `pattern`; `kind="after"`
            starts it at the layer following that one; `kind="after_type"` starts
            it after the n-th layer of a class, `pattern="MaxPooling2D:2"`.
    """

    def __init__(self, first, markers):
        self.first = first
        self.markers = list(markers)
        self.names = (first,) + tuple(name for name, _, _ in markers)

    def _matches(self, marker, layer, type_counts):
        _, kind, pattern = marker
        if kind == "after_type":
            class_name, count = pattern.split(":")
            return type(layer).__name__ == class_name and type_counts[class_name] == int(count)
        return re.fullmatch(pattern, layer.name) is not None

    def assign(self, layer_list):
        assigned, index, pending, type_counts = [], 0, False, {}
        for layer in layer_list:
            class_name = type(layer).__name__
            type_counts[class_name] = type_counts.get(class_name, 0) + 1
            if pending:
                index, pending = index + 1, False
            nxt = self.markers[index] if index < len(self.markers) else None
            if nxt is not None and nxt[1] == "at" and self._matches(nxt, layer, type_counts):
                index += 1
                nxt = self.markers[index] if index < len(self.markers) else None
            assigned.append(self.names[index])
            if nxt is not None and nxt[1] != "at" and self._matches(nxt, layer, type_counts):
                pending = True
        return assigned


class SuffixBlocks:
    """Blocks keyed by a layer-name suffix (NASNet cells end in their cell id).

    Args:
        names: ordered block names.
        key: function `layer_name -> block name or None` (None inherits).
    """

    def __init__(self, names, key):
        self.names = tuple(names)
        self.key = key

    def assign(self, layer_list):
        assigned, current = [], self.names[0]
        for layer in layer_list:
            current = self.key(layer.name) or current
            assigned.append(current)
        return assigned

