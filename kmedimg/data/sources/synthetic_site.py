"""`SitePhantomSource`: the chest-X-ray phantoms as "another hospital" would take them.

The same anatomy and the same finding as `PhantomSource` (a faint focal opacity in a
lung field: label `opacity`, else `normal`), seen through a different machine: a
portable unit with a flatter, foggier grey scale (less contrast), an exposure
gradient across the film (the anode heel effect) and more quantum noise. This is the
most common transfer in medical imaging: a model learned on many images from one
site, adapted to a few labelled images from another.

Image `i` depends only on `(seed, i)`, as for `PhantomSource`.
"""

import numpy as np

from kmedimg.data.sources.synthetic import PhantomSource


def site_exposure(rng, image):
    """The other site's acquisition, applied to a `[0, 1]` phantom; float32 in `[0, 1]`.

    Args:
        rng: a `np.random.Generator` (consumed).
        image: float (H, W) in [0, 1] (a `render_phantom` image).
    """
    size = image.shape[1]
    columns = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    fog = rng.uniform(0.12, 0.22)
    contrast = rng.uniform(0.6, 0.75)
    heel = rng.uniform(-0.15, 0.15) * columns[np.newaxis, :]
    image = fog + contrast * image * (1.0 + heel)
    image = image + rng.normal(0.0, rng.uniform(0.03, 0.05), size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


class SitePhantomSource(PhantomSource):
    """`num_images` phantoms from "site B": classes `normal`/`opacity`, uint8, one channel.

    A `Source` (see `kmedimg.data.sources.base`) for `kmedimg.data.writer.write_dataset`.

    Args:
        num_images: how many images. Must be >= 1.
        image_size: side length in pixels. Defaults to `32`.
        seed: the generator seed; image `i` depends only on `(seed, i)`. Defaults to `0`.
        opacity_fraction: probability that an image has an opacity. Defaults to `0.3`.

    Example:

    ```python
    source = SitePhantomSource(num_images=100, image_size=32, seed=1)
    item = next(iter(source))  # Item with pixels (32, 32, 1) uint8
    ```
    """

    item_prefix = "site-b-phantom"
    generator = "chest-x-ray phantom v1, site B exposure (fog, heel effect, noise)"

    def __init__(self, num_images, image_size=32, seed=0, opacity_fraction=0.3):
        super().__init__(num_images, image_size=image_size, seed=seed,
                         opacity_fraction=opacity_fraction)

    def acquire(self, rng, image):
        return site_exposure(rng, image)

    def describe(self):
        description = super().describe()
        del description["dtype"]
        return description
