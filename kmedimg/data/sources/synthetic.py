"""Deterministic, offline chest-X-ray-like phantoms: "normal" vs "opacity".

Every image is a frontal chest radiograph caricature drawn with numpy: a thorax of soft
tissue, two dark lung fields cut by diaphragm domes, a bright mediastinum, heart
shadow and spine, curved ribs crossing the lungs, vessel markings fanning from the
hila, low-frequency texture, quantum-like noise and a random exposure (gamma, window,
position, size, tilt). An "opacity" image also holds one faint, soft-edged focal
opacity of random size, place and contrast inside a lung field; a "normal" image has
none. Ribs, vessels and noise hide the faint ones, so a small CNN learns the task over
a few epochs without reaching a perfect score at once.

Image `i` depends only on `(seed, i)`, so iterating twice, or asking for image 1000
alone, gives the same pixels. `kmedimg.data.synthetic.make_phantom_dataset` writes
a phantom dataset in one call.
"""

import numpy as np

from kmedimg.core.vocabulary import PIXEL_DTYPES, SPLITS
from kmedimg.data.sources.base import Item
from kmedimg.data.sources.registry import register_source

CLASS_NAMES = ["normal", "opacity"]
DTYPES = PIXEL_DTYPES
PREFIX = "synthetic"


def _smooth_field(rng, yy, xx, terms=6, max_frequency=3.0):
    """A random low-frequency field in about [-1, 1] (sum of random plane waves)."""
    field = np.zeros_like(yy)
    for _ in range(terms):
        fy, fx = rng.uniform(-max_frequency, max_frequency, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(np.pi * (fy * yy + fx * xx) + phase)
    return field / np.sqrt(terms)


def _soft_ellipse(yy, xx, cy, cx, ry, rx, edge):
    """1 inside the ellipse, 0 outside, with a soft edge of relative width `edge`."""
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 + edge - distance) / (2 * edge), 0.0, 1.0)


def render_phantom(rng, image_size, opacity):
    """Draws one phantom.

    Args:
        rng: a `np.random.Generator` (consumed).
        image_size: side length in pixels.
        opacity: draw a focal opacity.

    Returns:
        `(image, facts)`: float32 (H, W) in [0, 1] and a dict describing the draw
        (opacity centre/size/contrast in pixels when present).
    """
    size = int(image_size)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    yy0, xx0 = np.meshgrid(axis, axis, indexing="ij")

    # Patient position and build: shift, scale, slight tilt.
    angle = np.deg2rad(rng.uniform(-6, 6))
    scale = rng.uniform(0.88, 1.06)
    shift_y, shift_x = rng.uniform(-0.06, 0.06, size=2)
    pose = (angle, scale, shift_y, shift_x)
    cos, sin = np.cos(angle), np.sin(angle)
    yy = ((yy0 - shift_y) * cos - (xx0 - shift_x) * sin) / scale
    xx = ((yy0 - shift_y) * sin + (xx0 - shift_x) * cos) / scale

    # The draws happen in this order (it fixes what `rng` gives each step).
    image, body, lungs, lung_boxes, lung_darkness = _draw_chest(rng, yy, xx)
    image += _ribs(rng, yy, xx) * body * (0.35 + 0.65 * lungs)
    image += _vessels(rng, yy, xx) * lungs * rng.uniform(0.03, 0.07)
    # Low-frequency texture (scatter, soft-tissue variation).
    image += _smooth_field(rng, yy0, xx0) * rng.uniform(0.01, 0.03) * body

    facts = {"opacity": bool(opacity)}
    if opacity:
        image += _opacity(rng, yy, xx, lungs, lung_boxes, lung_darkness, pose, size, facts)
    return _expose(rng, image), facts


def _draw_chest(rng, yy, xx):
    """Body, lung fields cut by diaphragm domes, mediastinum, heart and spine."""
    background = rng.uniform(0.02, 0.08)
    tissue = rng.uniform(0.42, 0.55)
    image = np.full(yy.shape, background, dtype=np.float32)
    body = _soft_ellipse(yy, xx, 0.08, 0.0, 1.05, rng.uniform(0.82, 0.92), 0.06)
    image += body * (tissue - background)

    lungs = np.zeros_like(image)
    lung_boxes = []
    for side in (-1.0, 1.0):
        cx = side * rng.uniform(0.34, 0.42)
        cy = rng.uniform(-0.12, -0.02)
        rx, ry = rng.uniform(0.25, 0.32), rng.uniform(0.55, 0.66)
        lung = _soft_ellipse(yy, xx, cy, cx, ry, rx, 0.08)
        dome_top = cy + ry * rng.uniform(0.55, 0.75)
        dome = dome_top + 0.5 * (xx - cx) ** 2
        lung *= np.clip((dome - yy) / 0.05, 0.0, 1.0)
        lungs = np.maximum(lungs, lung)
        lung_boxes.append((cy, cx, ry, rx, dome_top))
    lung_darkness = rng.uniform(0.24, 0.34)
    image -= lungs * lung_darkness

    # Mediastinum, heart (to the patient's left = image right) and spine.
    mediastinum = np.clip((0.14 - np.abs(xx)) / 0.05, 0, 1) * np.clip((yy + 0.75) / 0.1, 0, 1)
    heart = _soft_ellipse(
        yy, xx, rng.uniform(0.24, 0.34), rng.uniform(0.1, 0.16),
        rng.uniform(0.24, 0.3), rng.uniform(0.28, 0.36), 0.12,
    )
    soft_overlay = np.maximum(mediastinum, heart)
    image += soft_overlay * lungs * lung_darkness * rng.uniform(0.75, 0.95)
    spine = np.clip((0.06 - np.abs(xx)) / 0.02, 0, 1) * body * np.clip((0.95 - yy) / 0.2, 0, 1)
    image += spine * rng.uniform(0.04, 0.09)
    return image, body, lungs, lung_boxes, lung_darkness


def _ribs(rng, yy, xx):
    """Curved bright bands, denser laterally (times their brightness)."""
    rib_brightness = rng.uniform(0.06, 0.11)
    rib_thickness = rng.uniform(0.028, 0.04)
    first_rib = rng.uniform(-0.78, -0.68)
    spacing = rng.uniform(0.15, 0.19)
    ribs = np.zeros(yy.shape, dtype=np.float32)
    for k in range(9):
        y0 = first_rib + k * spacing
        curve = y0 + 0.12 * np.abs(xx) + 0.55 * np.maximum(np.abs(xx) - 0.2, 0.0) ** 2
        band = np.clip(1.0 - np.abs(yy - curve) / rib_thickness, 0.0, 1.0)
        ribs = np.maximum(ribs, band * (np.abs(xx) > 0.07))
    # Ribs show mostly against the air of the lungs, faintly through soft tissue.
    return ribs * rib_brightness


def _vessels(rng, yy, xx):
    """Thin lines fanning out from each hilum, fading laterally."""
    vessels = np.zeros(yy.shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        hilum_y, hilum_x = rng.uniform(-0.05, 0.1), side * 0.18
        for _ in range(rng.integers(5, 9)):
            theta = rng.uniform(-np.pi * 0.45, np.pi * 0.45) + (0 if side > 0 else np.pi)
            direction_y, direction_x = np.sin(theta), np.cos(theta)
            along = (yy - hilum_y) * direction_y + (xx - hilum_x) * direction_x
            across = np.abs(-(yy - hilum_y) * direction_x + (xx - hilum_x) * direction_y)
            width = rng.uniform(0.008, 0.02)
            line = np.clip(1 - across / width, 0, 1) * np.clip(1 - along / 0.6, 0, 1)
            vessels = np.maximum(vessels, line * (along > 0))
    return vessels


def _opacity(rng, yy, xx, lungs, lung_boxes, lung_darkness, pose, size, facts):
    """One faint, soft-edged focal opacity inside a lung field; records it in `facts`."""
    angle, scale, shift_y, shift_x = pose
    cos, sin = np.cos(angle), np.sin(angle)
    cy, cx, ry, rx, dome_top = lung_boxes[rng.integers(0, 2)]
    for _ in range(100):  # rejection-sample a centre well inside the lung
        oy = cy + rng.uniform(-0.75, 0.75) * ry
        ox = cx + rng.uniform(-0.7, 0.7) * rx
        inside = ((oy - cy) / ry) ** 2 + ((ox - cx) / rx) ** 2 < 0.6
        if inside and oy < dome_top - 0.05:
            break
    sigma = rng.uniform(0.07, 0.16)
    contrast = rng.uniform(0.18, 0.45) * lung_darkness / 0.3
    blob = np.exp(-(((yy - oy) ** 2 + (xx - ox) ** 2) / (2 * sigma**2)))
    # Back to image pixel coordinates for the facts (undo tilt/scale/shift).
    py = oy * scale * cos + ox * scale * sin + shift_y
    px = -oy * scale * sin + ox * scale * cos + shift_x
    facts.update(
        opacity_center_yx=[float((py + 1) / 2 * size), float((px + 1) / 2 * size)],
        opacity_sigma_px=float(sigma * scale * size / 2),
        opacity_contrast=float(contrast),
    )
    return blob * lungs * contrast


def _expose(rng, image):
    """Exposure: window, gamma, noise; float32 in [0, 1]."""
    low, high = rng.uniform(-0.02, 0.06), rng.uniform(0.68, 0.85)
    image = np.clip((image - low) / (high - low), 0.0, 1.0)
    image = image ** rng.uniform(0.8, 1.25)
    noise = rng.uniform(0.02, 0.045)
    image += rng.normal(0.0, noise, size=image.shape) * np.sqrt(image + 0.05)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@register_source("synthetic")
class PhantomSource:
    """`num_images` deterministic chest-X-ray-like phantoms, classes `normal`/`opacity`.

    Args:
        num_images: how many images. Must be >= 1.
        image_size: side length in pixels. Defaults to `64`.
        seed: the generator seed; image `i` depends only on `(seed, i)`. Defaults to `0`.
        opacity_fraction: probability that an image has an opacity. Defaults to `0.5`.
        dtype: `"uint8"` (0..255) or `"uint16"` (0..65535). Defaults to `"uint8"`.
        split: assign every item this split (e.g. `"test"`), or None to let the
            writer split. Defaults to `None`.

    Example:

    ```python
    source = PhantomSource(num_images=100, image_size=64, seed=0)
    item = next(iter(source))  # Item with pixels (64, 64, 1) uint8
    ```
    """

    task = "binary"
    item_prefix = "phantom"
    generator = "chest-x-ray phantom v1"

    def __init__(
        self, num_images, image_size=64, seed=0, opacity_fraction=0.5, dtype="uint8", split=None
    ):
        if int(num_images) < 1:
            raise ValueError(f"`num_images` must be >= 1. Received: num_images={num_images!r}")
        if int(image_size) < 8:
            raise ValueError(f"`image_size` must be >= 8. Received: image_size={image_size!r}")
        if not 0.0 <= float(opacity_fraction) <= 1.0:
            raise ValueError(
                "`opacity_fraction` must be in [0, 1]. "
                f"Received: opacity_fraction={opacity_fraction!r}"
            )
        if dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
        if split not in (None,) + SPLITS:
            raise ValueError(
                f"`split` must be None, 'train', 'val' or 'test'. Received: split={split!r}"
            )
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.opacity_fraction = float(opacity_fraction)
        self.dtype = dtype
        self.split = split
        self.class_names = list(CLASS_NAMES)

    @classmethod
    def from_spec(cls, spec, **options):
        """`"synthetic:N"` -> `PhantomSource(num_images=N, **options)`."""
        _, _, count = spec.partition(":")
        if count:
            if not count.isdigit():
                raise ValueError(
                    "A synthetic source is named `synthetic:N` with N images. "
                    f"Received: spec={spec!r}"
                )
            options.setdefault("num_images", int(count))
        if "num_images" not in options:
            raise ValueError(
                "Say how many phantoms to make: `synthetic:N` (e.g. synthetic:2000). "
                f"Received: spec={spec!r}"
            )
        return cls(**options)

    @staticmethod
    def sniff(spec):
        return 10 if spec == PREFIX or spec.startswith(PREFIX + ":") else 0

    def render(self, index):
        """The image `index` as `(pixels HxWx1, label_name, facts)`."""
        rng = np.random.default_rng([self.seed, int(index)])
        opacity = bool(rng.random() < self.opacity_fraction)
        image, facts = render_phantom(rng, self.image_size, opacity)
        image = self.acquire(rng, image)
        top = 65535 if self.dtype == "uint16" else 255
        pixels = np.rint(image * top).astype(self.dtype)[..., np.newaxis]
        return pixels, CLASS_NAMES[int(opacity)], facts

    def acquire(self, rng, image):
        """The site's acquisition of a `[0, 1]` phantom (this site: none). Subclasses change it."""
        return image

    def __len__(self):
        return self.num_images

    def __iter__(self):
        for index in range(self.num_images):
            pixels, label, facts = self.render(index)
            yield Item(
                source=f"{self.item_prefix}[{index}]",
                pixels=pixels,
                labels=(label,),
                split=self.split,
                metadata=facts,
            )

    def describe(self):
        return {
            "format": "synthetic",
            "generator": self.generator,
            "num_images": self.num_images,
            "image_size": self.image_size,
            "seed": self.seed,
            "opacity_fraction": self.opacity_fraction,
            "dtype": self.dtype,
        }
