"""`InvertedPhantoms`: the demo's target modality (phantoms with inverted grey levels)."""

import dataclasses

from kmedimg.data.synthetic import PhantomSource


@dataclasses.dataclass
class InvertedPhantoms:
    """Phantoms with inverted grey levels (bright lungs): a 'different modality'.

    A `Source` (see `kmedimg.data.sources.base`) wrapping `PhantomSource`.

    Args:
        num_images: how many images.
        image_size: side length. Defaults to `32`.
        seed: generator seed. Defaults to `0`.
        opacity_fraction: share of the `opacity` class. Defaults to `0.3`.
    """

    num_images: int
    image_size: int = 32
    seed: int = 0
    opacity_fraction: float = 0.3

    task = "binary"

    def __post_init__(self):
        self._phantoms = PhantomSource(
            num_images=self.num_images, image_size=self.image_size, seed=self.seed,
            opacity_fraction=self.opacity_fraction,
        )
        self.class_names = list(self._phantoms.class_names)

    def __len__(self):
        return self.num_images

    def __iter__(self):
        for item in self._phantoms:
            yield dataclasses.replace(item, pixels=255 - item.pixels,
                                      source=f"inverted-{item.source}")

    def describe(self):
        return {**self._phantoms.describe(), "generator": "inverted chest-x-ray phantom v1"}
