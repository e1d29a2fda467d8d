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

from kmedimg.data.sources.base import Item
from kmedimg.data.sources.synthetic import CLASS_NAMES, render_phantom


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


class SitePhantomSource:
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

    task = "binary"

    def __init__(self, num_images, image_size=32, seed=0, opacity_fraction=0.3):
        if int(num_images) < 1:
            raise ValueError(f"`num_images` must be >= 1. Received: num_images={num_images!r}")
        if int(image_size) < 8:
            raise ValueError(f"`image_size` must be >= 8. Received: image_size={image_size!r}")
        if not 0.0 <= float(opacity_fraction) <= 1.0:
            raise ValueError(
                "`opacity_fraction` must be in [0, 1]. "
                f"Received: opacity_fraction={opacity_fraction!r}"
            )
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.opacity_fraction = float(opacity_fraction)
        self.class_names = list(CLASS_NAMES)

    def render(self, index):
        """The image `index` as `(pixels HxWx1 uint8, label_name, facts)`."""
        rng = np.random.default_rng([self.seed, int(index)])
        opacity = bool(rng.random() < self.opacity_fraction)
        image, facts = render_phantom(rng, self.image_size, opacity)
        image = site_exposure(rng, image)
        pixels = np.rint(image * 255).astype("uint8")[..., np.newaxis]
        return pixels, CLASS_NAMES[int(opacity)], facts

    def __len__(self):
        return self.num_images

    def __iter__(self):
        for index in range(self.num_images):
            pixels, label, facts = self.render(index)
            yield Item(source=f"site-b-phantom[{index}]", pixels=pixels, labels=(label,),
                       metadata=facts)

    def describe(self):
        return {
            "format": "synthetic",
            "generator": "chest-x-ray phantom v1, site B exposure (fog, heel effect, noise)",
            "num_images": self.num_images,
            "image_size": self.image_size,
            "seed": self.seed,
            "opacity_fraction": self.opacity_fraction,
        }
