"""Checks that stop a run before it trains: XLA-incompatible layers, local paths on TPU."""

from kmedimg.distribute.platforms import is_tpu_strategy

_GCS_HINT = (
    "Copy the data with `tpu/stage_to_gcs.sh` and point data, checkpoint and run "
    "directories at a gs:// bucket the TPU service account can read and write."
)

# Keras layers whose TensorFlow ops (ImageProjectiveTransformV3, dynamic ranges) have
# no XLA kernel: a model holding one cannot compile with jit_compile=True nor on a
# TPU ("Detected unsupported operations when trying to compile graph", reproduced
# here on CPU XLA in float32 and bfloat16; under bf16 on TPU, keras-team/keras#17508).
XLA_INCOMPATIBLE_LAYERS = (
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomShear",
    "RandomPerspective",
    "RandomElasticTransform",
    "RandAugment",
)


def check_layers_for_xla(model):
    """Refuses a model that cannot compile under XLA (TPU, `jit_compile=True`).

    Args:
        model: a Keras model; nested models are searched too.

    Raises:
        ValueError: naming each layer of `XLA_INCOMPATIBLE_LAYERS` found, with
            the XLA-clean replacement.
    """
    found = [
        f"{type(layer).__name__} {layer.name!r}"
        for layer in _walk_layers(model)
        if type(layer).__name__ in XLA_INCOMPATIBLE_LAYERS
    ]
    if found:
        raise ValueError(
            "The model cannot compile under XLA (TPU or jit_compile=True): these Keras "
            "augmentation layers use TensorFlow ops without an XLA kernel. Use "
            "kmedimg.layers.MedicalAugmentation (one float32 affine warp that compiles "
            "under XLA and bfloat16) or augment in tf.data instead. "
            f"Received: layers=[{', '.join(found)}]"
        )


def _walk_layers(layer):
    for child in getattr(layer, "layers", ()):
        yield child
        yield from _walk_layers(child)


def tpu_sees_local_disk(strategy):
    """Whether a TPU run reads and writes this machine's own disk.

    True on a single-host TPU VM (a Cloud TPU VM such as v2-8 / v5e-8, and Colab's
    current TPU runtimes): the TPU is attached to this host (`tpu="local"`, so the
    resolver's master is `""`), and the input pipeline and checkpoint writes run
    here. False for a TPU node or the retired remote Colab TPU (`grpc://host:8470`:
    the ops run on a TPU host that cannot see this disk) and for pods and slices of
    several hosts (each host reads its own disk).

    Args:
        strategy: a `tf.distribute.TPUStrategy`, or its
            `tf.distribute.cluster_resolver.TPUClusterResolver`.
    """
    resolver = getattr(strategy, "cluster_resolver", strategy)
    if not hasattr(resolver, "master"):
        return False
    hosts = getattr(getattr(strategy, "extended", None), "num_hosts", 1)
    return resolver.master() == "" and hosts == 1


def check_paths_for_tpu(strategy, **paths):
    """On a TPU that cannot see this disk, refuses local paths for data and run directories.

    TPU nodes, the retired remote Colab TPU and multi-host pods run the input
    pipeline and write checkpoints on hosts that do not see this machine's disk, so
    every path they touch must be a `gs://` URL. A single-host TPU VM (Colab's
    current TPU runtime included) reads and writes its own disk, so local paths pass
    there (`tpu_sees_local_disk`). This check runs before any training.

    Args:
        strategy: a `tf.distribute.Strategy`, or the platform name (`"tpu"`: a TPU
            whose host is unknown, checked strictly). Non-TPU strategies accept any path.
        **paths: named paths, e.g. `data="gs://bucket/ds", run_dir="gs://bucket/runs"`;
            `None` values are skipped.

    Raises:
        ValueError: naming every local path.

    Example:

    >>> check_paths_for_tpu("cpu", data="/home/me/data")  # fine off TPU
    """
    if isinstance(strategy, str):
        if strategy != "tpu":
            return
    elif not is_tpu_strategy(strategy) or tpu_sees_local_disk(strategy):
        return
    local = {
        name: str(path)
        for name, path in paths.items()
        if path is not None and not str(path).startswith("gs://")
    }
    if local:
        listed = ", ".join(f"{name}={path!r}" for name, path in local.items())
        raise ValueError(
            "TPU workers read only gs:// paths (this TPU's hosts cannot see this machine's "
            "disk; only a single-host TPU VM with tpu='local' can): "
            f"{', '.join(local)} {'is a local path' if len(local) == 1 else 'are local paths'}. "
            f"{_GCS_HINT} Received: {listed}"
        )
