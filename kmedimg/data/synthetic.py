"""Synthetic chest-X-ray-like phantoms as a dataset in one call: `make_phantom_dataset`.

The phantoms themselves (`PhantomSource`, `render_phantom`) are the "synthetic"
importer in `kmedimg.data.sources.synthetic`; they are re-exported here.
"""

from kmedimg.data.sources.synthetic import CLASS_NAMES, PhantomSource, render_phantom
from kmedimg.data.writer import write_dataset

__all__ = ["CLASS_NAMES", "PhantomSource", "make_phantom_dataset", "render_phantom"]


def make_phantom_dataset(
    out_dir,
    num_images=1000,
    image_size=64,
    seed=0,
    val_fraction=0.2,
    test_fraction=0.2,
    dtype="uint8",
    opacity_fraction=0.5,
    **writer_kwargs,
):
    """Writes a phantom dataset as sharded TFRecords + manifest in one call.

    Args:
        out_dir: output directory (local or gs://).
        num_images: how many images. Defaults to `1000`.
        image_size: side length in pixels. Defaults to `64`.
        seed: generator and split seed. Defaults to `0`.
        val_fraction: share of images in `val`. Defaults to `0.2`.
        test_fraction: share of images in `test`. Defaults to `0.2`.
        dtype: `"uint8"` or `"uint16"`. Defaults to `"uint8"`.
        opacity_fraction: probability of the `opacity` class. Defaults to `0.5`.
        **writer_kwargs: forwarded to `kmedimg.data.writer.write_dataset` (encoding,
            compression, num_shards, progress, ...).

    Returns:
        The written `Manifest`.

    Example:

    ```python
    manifest = make_phantom_dataset("/tmp/phantoms", num_images=500)
    ```
    """
    source = PhantomSource(
        num_images=num_images,
        image_size=image_size,
        seed=seed,
        opacity_fraction=opacity_fraction,
        dtype=dtype,
    )
    return write_dataset(
        source,
        out_dir,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        **writer_kwargs,
    )
