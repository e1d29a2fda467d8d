"""What pass 1 of a conversion flags beyond exact duplicates: identical images under
different labels, and patients whose images sit in more than one split.

Both are facts about the whole dataset, found from the `PlannedItem`s of
`kmedimg.data.planning` (labels, content hash, patient key, split; no pixels):

- Label conflicts: exact copies of one image that carry different labels cannot
  all be right, and nothing tells which one is; every copy is rejected with a
  reason naming the others, so the conflict is listed in rejected.csv and counted.
- Patients in several splits: the source's own splits (a CSV `split` column) may
  put one patient's images in train and test, a leak that inflates every test
  metric. The images are kept as the source gives them; the patients are counted
  and logged as a warning.
"""

import collections
import logging

logger = logging.getLogger(__name__)

#: How many other copies a label-conflict reason names.
_NAMED_COPIES = 3


def _label_text(labels, class_names):
    return "|".join(class_names[index] for index in labels) or "(no label)"


def reject_label_conflicts(groups, rejections, class_names):
    """Rejects every copy of each duplicate group whose copies carry different labels.

    Args:
        groups: lists of `PlannedItem`s with identical pixels.
        rejections: position -> reason, updated in place.
        class_names: the dataset's class names (for the reasons).

    Returns:
        `(conflicts, others)`: the conflicting groups, and the remaining groups.
    """
    conflicts, others = [], []
    for group in groups:
        if len({entry.labels for entry in group}) == 1:
            others.append(group)
            continue
        conflicts.append(group)
        for entry in group:
            copies = [f"{other.source} ({_label_text(other.labels, class_names)})"
                      for other in group if other is not entry]
            more = len(copies) - _NAMED_COPIES
            rejections[entry.position] = (
                f"identical image under conflicting labels: "
                f"{_label_text(entry.labels, class_names)} here, "
                f"{', '.join(copies[:_NAMED_COPIES])}{f' and {more} more' if more > 0 else ''}"
                "; fix the label or remove the wrong copy"
            )
    if conflicts:
        logger.warning(
            "%d groups of identical images carry conflicting labels; all %d copies are "
            "rejected (see rejected.csv).", len(conflicts), sum(map(len, conflicts)))
    return conflicts, others


def patients_in_several_splits(entries):
    """Patient keys whose entries lie in more than one split, each with its splits.

    Args:
        entries: the kept `PlannedItem`s, with their final splits.

    Returns:
        `{patient: sorted split names}` (empty when every patient has one split).
    """
    splits = collections.defaultdict(set)
    for entry in entries:
        if entry.patient:
            splits[entry.patient].add(entry.split)
    several = {patient: sorted(names) for patient, names in splits.items() if len(names) > 1}
    if several:
        logger.warning(
            "%d patients have images in several of the splits given by the source (e.g. "
            "%s); their images leak between training and evaluation. Give each patient "
            "one split, or let the writer split (it keeps patients together).",
            len(several), "/".join(next(iter(several.values()))))
    return several
