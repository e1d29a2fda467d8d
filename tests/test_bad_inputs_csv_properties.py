"""Property-based CSV mutations (issue 14): whatever a table holds, `CsvSource` either
refuses it with a one-line ValueError naming the file, or accounts for every row —
an `Item` or a `Rejected` whose reason names the row — and never stores a raw
patient id or a multi-label row outside a multi-label task."""

import csv
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.csv_source import CsvSource

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])
_LABEL_PIECES = ["a", "b", "A", "c", "0", "1", "7", "a|b", "b|", " a", "a\x00", "Bb", "",
                 "1000000000", "a a", "é", "a_b", "a-b"]
_PATHS = ["0.png", "1.png", "2.png", "3.png", "missing.png", "../outside.png", "",
          "sub", "0.png", "./1.png", "not_image.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv_props")
    for index in range(4):
        pixels = np.full((6, 6), 40 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{index}.png")
    (root / "not_image.png").write_text("hello")
    (root / "sub").mkdir()
    return root


row_strategy = st.tuples(
    st.sampled_from(_PATHS),
    st.lists(st.sampled_from(_LABEL_PIECES), min_size=1, max_size=2).map("".join),
    st.sampled_from(["", "p1", "MRN998877", "p 2"]),
    st.sampled_from(["train", "val", "test", "TEST", "validation", "dev", ""]),
)


def _check(source_kwargs, path, rows, raw_patients):
    try:
        source = CsvSource(path, channels=1, dtype="uint8", salt="pepper", **source_kwargs)
        entries = list(source)
    except ValueError as error:
        message = str(error)
        assert "\n" not in message.strip() and path.name in message or "class" in message
        return
    non_blank = [row for row in rows if any(cell.strip() for cell in row)]
    assert len(entries) == len(non_blank)
    for entry in entries:
        assert isinstance(entry, (Item, Rejected))
        entry.source.encode("utf-8")
        if isinstance(entry, Rejected):
            assert entry.reason.startswith("row ")
        else:
            assert entry.patient is None or entry.patient not in raw_patients
            assert len(entry.patient or "x" * 16) == 16
            if source.task != "multilabel":
                assert len(entry.labels) == 1


@PROPERTY_SETTINGS
@given(rows=st.lists(row_strategy, min_size=1, max_size=8),
       task=st.sampled_from([None, "multilabel", "multiclass"]))
def test_any_table_is_refused_in_one_line_or_fully_accounted(folder, rows, task):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "patient_id", "split"])
    writer.writerows(rows)
    path = folder / "t.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    _check({"task": task}, path, rows, {row[2] for row in rows if row[2]})


@PROPERTY_SETTINGS
@given(position=st.integers(min_value=0, max_value=200), junk=st.binary(min_size=1, max_size=3))
def test_byte_mutations_never_escape_as_tracebacks(folder, position, junk):
    text = "path,label,patient_id\n0.png,a,p1\n1.png,b,p2\n2.png,a,p3\n3.png,b,p4\n"
    data = text.encode("utf-8")
    position %= len(data)
    path = folder / "m.csv"
    path.write_bytes(data[:position] + junk + data[position:])
    try:
        source = CsvSource(path, channels=1, dtype="uint8", salt="pepper",
                           ignore_extra_columns=True)
        entries = list(source)
    except ValueError as error:
        assert "m.csv" in str(error) or "class" in str(error)
        return
    for entry in entries:
        entry.source.encode("utf-8")
        assert isinstance(entry, Item) or entry.reason.startswith("row ")
        if isinstance(entry, Item):
            assert entry.patient not in {"p1", "p2", "p3", "p4"}
