"""`SitePhantomSource`: the demo's site-B phantoms (same finding, another machine)."""

import numpy as np
import pytest

from kmedimg.data.sources.synthetic import PhantomSource
from kmedimg.data.sources.synthetic_site import SitePhantomSource


def test_site_b_keeps_site_a_labels_but_looks_different_and_is_deterministic():
    site_a = list(PhantomSource(40, 32, seed=3, opacity_fraction=0.3))
    site_b = list(SitePhantomSource(40, 32, seed=3, opacity_fraction=0.3))
    assert [item.labels for item in site_b] == [item.labels for item in site_a]
    assert {item.labels[0] for item in site_b} == {"normal", "opacity"}
    a = np.stack([item.pixels for item in site_a]).astype(float)
    b = np.stack([item.pixels for item in site_b]).astype(float)
    assert b.shape == (40, 32, 32, 1) and site_b[0].pixels.dtype == np.uint8
    # Foggier (darkest pixels lifted) and flatter (less contrast) than site A.
    assert np.percentile(b, 5) > np.percentile(a, 5) + 20
    assert b.std() < 0.8 * a.std()
    again = next(iter(SitePhantomSource(40, 32, seed=3, opacity_fraction=0.3)))
    np.testing.assert_array_equal(again.pixels, site_b[0].pixels)


@pytest.mark.parametrize("kwargs, name", [
    ({"num_images": 0}, "num_images"),
    ({"num_images": 4, "image_size": 4}, "image_size"),
    ({"num_images": 4, "opacity_fraction": 1.5}, "opacity_fraction"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}`.*Received: {name}="):
        SitePhantomSource(**kwargs)
