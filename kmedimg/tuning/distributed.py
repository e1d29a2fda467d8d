"""Keras Tuner's chief/worker mode, set up from two command-line flags.

One chief process holds the oracle and serves it over gRPC; any number of worker
processes ask it for trials, train them and report back. Keras Tuner reads three
environment variables to decide a process's role; `configure_role` sets them.
"""

import os
import socket
import time

ROLES = ("chief", "worker")
ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"


def parse_address(address):
    """Splits `"host:port"` into `(host, port)`, with errors naming the argument."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(
            "The oracle address must look like HOST:PORT, e.g. 127.0.0.1:8000. "
            f"Received: oracle_address={address!r}"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            "The oracle address must look like HOST:PORT with a port in 1..65535. "
            f"Received: oracle_address={address!r}"
        )
    return host.strip("[]"), int(port)


def configure_role(role, oracle_address="127.0.0.1:8000", tuner_id=None, environ=None):
    """Sets Keras Tuner's environment variables for a chief or worker process.

    Args:
        role: `"chief"`, `"worker"`, or `None` (single process: the variables are
            removed).
        oracle_address: `HOST:PORT` the chief listens on and workers dial.
            Defaults to `"127.0.0.1:8000"`.
        tuner_id: A worker's id; keep it stable across restarts so a restarted
            worker resumes its unfinished trial. `None` makes one from the host
            name and process id. Defaults to `None`.
        environ: The mapping to change. Defaults to `os.environ`.

    Returns:
        The tuner id set (or `None` for a single process).

    Example:

    >>> configure_role("worker", "10.0.0.2:8000", tuner_id="worker-1", environ={})
    'worker-1'
    """
    environ = os.environ if environ is None else environ
    if role is None:
        for name in (ENV_TUNER_ID, ENV_ORACLE_IP, ENV_ORACLE_PORT):
            environ.pop(name, None)
        return None
    if role not in ROLES:
        raise ValueError(f"Unknown role. Allowed: chief, worker. Received: role={role!r}")
    host, port = parse_address(oracle_address)
    if role == "chief":
        tuner_id = "chief"
    else:
        tuner_id = tuner_id or f"worker-{socket.gethostname()}-{os.getpid()}"
        if "chief" in tuner_id:
            # Keras Tuner treats any id containing "chief" as the chief.
            raise ValueError(
                f"A worker's tuner id must not contain 'chief'. Received: tuner_id={tuner_id!r}"
            )
    environ[ENV_TUNER_ID] = tuner_id
    environ[ENV_ORACLE_IP] = host
    environ[ENV_ORACLE_PORT] = str(port)
    return tuner_id


def current_role(environ=None):
    """`"chief"`, `"worker"` or `None`, as Keras Tuner will see it."""
    environ = os.environ if environ is None else environ
    if ENV_ORACLE_IP not in environ:
        return None
    return "chief" if "chief" in environ.get(ENV_TUNER_ID, "") else "worker"


def serve_oracle(oracle, poll_seconds=0.5, stream=None, table=None):
    """Serves `oracle` to workers until the search is over and every worker has left.

    Keras Tuner's own server loop checks for the end every 20 s; this one uses the
    same servicer and checks every `poll_seconds`, and stops the server afterwards.

    Args:
        oracle: The chief's `keras_tuner.Oracle`.
        poll_seconds: How often to check whether the search is over. Defaults to `0.5`.
        stream: Where to print the listening address, or `None`. Defaults to `None`.
        table: A `TrialTable` the chief prints every trial's start and end to, or
            `None`. Defaults to `None`.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    host = os.environ[ENV_ORACLE_IP]
    port = os.environ[ENV_ORACLE_PORT]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise ValueError(
            f"The chief cannot listen on {host}:{port} (in use or not this machine's "
            f"address). Received: oracle_address='{host}:{port}'"
        )
    server.start()
    if stream is not None:
        print(f"chief: oracle serving on {host}:{port}", file=stream, flush=True)
    shown = {}
    try:
        while True:
            time.sleep(poll_seconds)
            if table is not None:
                _show_progress(oracle, table, shown)
            if servicer.stop_triggered and oracle_chief.exit_chief(oracle):
                break
        if table is not None:
            _show_progress(oracle, table, shown)
    finally:
        server.stop(grace=2).wait()


def _show_progress(oracle, table, shown):
    """Prints the trials that started or ended since the last call, with their worker."""
    trials = list(oracle.trials.items())
    owners = shown.setdefault("_owners", {})
    for tuner_id, trial in list(oracle.ongoing_trials.items()):
        owners.setdefault(trial.trial_id, tuner_id)
    ended = ("COMPLETED", "FAILED", "INVALID")
    for trial_id, trial in trials:
        status = str(trial.status).replace("TrialStatus.", "")
        before = shown.get(trial_id)
        worker = owners.get(trial_id, "?")
        if before is None:
            table.begin(trial, worker=worker)
        if status in ended and before not in ended:
            table.end(trial, worker=worker)
        shown[trial_id] = status
