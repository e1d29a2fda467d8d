"""`TF_CONFIG`, parsed and validated: the cluster a multi-worker run joins."""

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """The parts of `TF_CONFIG` a multi-worker run needs.

    Attributes:
        workers: `host:port` of every worker, in index order.
        task_type: this process's role, `"worker"` or `"chief"`.
        task_index: this process's index within its role.
        chief: `host:port` of the chief, if the cluster has one.
    """

    workers: tuple
    task_type: str
    task_index: int
    chief: str = None

    @property
    def num_workers(self):
        return len(self.workers) + (1 if self.chief else 0)

    @property
    def is_chief(self):
        return self.task_type == "chief" or (self.chief is None and self.task_index == 0)


def parse_tf_config(text):
    """Parses and validates a `TF_CONFIG` JSON string.

    Args:
        text: the value of `$TF_CONFIG`, e.g.
            `{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
            "task": {"type": "worker", "index": 0}}`.

    Returns:
        A `ClusterSpec`.

    Raises:
        ValueError: naming the missing or malformed field.
    """
    example = (
        'e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not text:
        raise ValueError(
            "kind='multiworker' needs the TF_CONFIG environment variable describing the "
            f"cluster and this task, {example}. Received: TF_CONFIG={text!r}"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}). Received: TF_CONFIG={text!r}")
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' object, {example}. Received: TF_CONFIG={text!r}")
    cluster = config["cluster"]
    unknown = sorted(set(cluster) - {"worker", "chief", "evaluator", "ps"})
    if unknown:
        raise ValueError(
            "TF_CONFIG cluster has unknown job names; allowed: worker, chief, evaluator, ps. "
            f"Received: cluster keys={sorted(cluster)}"
        )
    if "ps" in cluster:
        raise ValueError(
            "TF_CONFIG lists parameter servers ('ps'); kmedimg trains with "
            "MultiWorkerMirroredStrategy, which takes only 'worker' (and optionally one "
            f"'chief'). Received: cluster keys={sorted(cluster)}"
        )
    workers = cluster.get("worker", [])
    chiefs = cluster.get("chief", [])
    for job, addresses in (("worker", workers), ("chief", chiefs)):
        if not isinstance(addresses, list) or not all(
            isinstance(address, str) and _is_host_port(address) for address in addresses
        ):
            raise ValueError(
                f"TF_CONFIG cluster.{job} must be a list of 'host:port' strings. "
                f"Received: cluster.{job}={addresses!r}"
            )
    if len(chiefs) > 1:
        raise ValueError(f"TF_CONFIG may list at most one chief. Received: cluster.chief={chiefs!r}")
    if not workers and not chiefs:
        raise ValueError(f"TF_CONFIG cluster lists no workers, {example}. Received: TF_CONFIG={text!r}")
    task = config.get("task")
    if not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG needs a 'task' object, {example}. Received: TF_CONFIG={text!r}")
    task_type, task_index = task.get("type"), task.get("index")
    if task_type not in ("worker", "chief", "evaluator"):
        raise ValueError(
            "TF_CONFIG task.type must be one of worker, chief, evaluator. "
            f"Received: task.type={task_type!r}"
        )
    members = {"worker": workers, "chief": chiefs}.get(task_type, cluster.get("evaluator", []))
    if not isinstance(task_index, int) or isinstance(task_index, bool) or not (
        0 <= task_index < len(members)
    ):
        raise ValueError(
            f"TF_CONFIG task.index must be an integer in [0, {len(members)}) for "
            f"{len(members)} {task_type}(s). Received: task.index={task_index!r}"
        )
    return ClusterSpec(
        workers=tuple(workers),
        task_type=task_type,
        task_index=task_index,
        chief=chiefs[0] if chiefs else None,
    )


def _is_host_port(address):
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()
