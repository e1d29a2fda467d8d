"""A tuning project directory remembers which search it holds, and refuses another.

Keras Tuner reloads whatever project it finds under a name; resuming an unrelated
search with different ranges would silently mix two experiments. `claim_project`
writes `search.json` (the tuner, objective, model and search space) on first use and
compares it on every later one.
"""

import json
import os
import shutil

RECORD_NAME = "search.json"
# Extending the budget of a search is a legitimate resume, not a different search.
_NOT_COMPARED = ("max_trials", "directory", "project_name", "isolate_trials")


def search_record(hypermodel, settings):
    """The identity of a search: what must match for a project to be resumed."""
    space = hypermodel.search_space_config()
    tuner = {k: v for k, v in settings.to_dict().items() if k not in _NOT_COMPARED}
    tuner.pop("search_space")
    tuner["max_epochs"] = hypermodel.total_epochs
    return {"tuner": tuner, "model": hypermodel.describe(), "space": space}


def project_dir(directory, project_name):
    return os.path.join(str(directory), str(project_name))


def claim_project(directory, project_name, record, overwrite=False):
    """Creates, or checks and resumes, the project directory for `record`.

    Args:
        directory: Parent directory.
        project_name: Project name.
        record: The search record (`search_record(...)`).
        overwrite: Delete an existing project first. Defaults to `False`.

    Returns:
        `True` when an existing project is resumed, `False` for a fresh one.
    """
    path = project_dir(directory, project_name)
    record_path = os.path.join(path, RECORD_NAME)
    if overwrite and os.path.exists(path):
        shutil.rmtree(path)
    record = json.loads(json.dumps(record))  # the form it has once read back
    if os.path.exists(record_path):
        with open(record_path) as handle:
            stored = json.load(handle)
        differences = _differences(stored, record)
        if differences:
            listed = "; ".join(differences[:6])
            raise ValueError(
                f"The tuning project {path} holds a different search ({listed}). "
                "Resume it with the same recipe and tune settings, pass --overwrite to "
                "start fresh, or choose another --project-name. "
                f"Received: project={path!r}"
            )
        return True
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(
            f"The directory {path} exists but is not a kmedimg tuning project (no "
            f"{RECORD_NAME}). Pass --overwrite to replace it or choose another "
            f"--project-name. Received: project={path!r}"
        )
    os.makedirs(path, exist_ok=True)
    with open(record_path, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    return False


def _differences(stored, new, prefix=""):
    out = []
    if isinstance(stored, dict) and isinstance(new, dict):
        for key in sorted(set(stored) | set(new)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in stored:
                out.append(f"{name} is new")
            elif key not in new:
                out.append(f"{name} was {stored[key]!r}, now absent")
            else:
                out.extend(_differences(stored[key], new[key], name))
    elif stored != new:
        out.append(f"{prefix} was {stored!r}, now {new!r}")
    return out
