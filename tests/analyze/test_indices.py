"""Morphology indices on drawn shapes with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import disk as draw_disk
from skimage.morphology import skeletonize

from synthfm.analyze import indices as ix


def test_box_counting_dimension_of_line_and_plane() -> None:
    """A straight line has dimension 1, a filled square 2."""
    line = np.zeros((256, 256), bool)
    line[100, :] = True
    plane = np.ones((256, 256), bool)
    assert ix.fractal_dimension(line) == pytest.approx(1.0, abs=1e-6)
    assert ix.fractal_dimension(plane) == pytest.approx(2.0, abs=1e-6)
    assert math.isnan(ix.fractal_dimension(np.zeros((64, 64), bool)))


def test_density_and_width_of_a_bar() -> None:
    """A 5-pixel-wide bar: width 5 on its centreline; density = bar area / field area."""
    mask = np.zeros((80, 80), bool)
    mask[30:35, 10:70] = True
    fov = np.ones_like(mask)
    assert ix.vessel_density(mask, fov) == pytest.approx(300 / 6400)
    assert ix.mean_width(mask) == pytest.approx(5.0, abs=0.3)
    one = np.zeros((40, 40), bool)
    one[20, 5:35] = True
    assert ix.mean_width(one) == pytest.approx(1.0)


def _arc(radius: float, degrees: float, size: int = 300) -> np.ndarray:
    """A one-pixel curve: an arc of a circle of `radius` spanning `degrees`."""
    t = np.linspace(0, math.radians(degrees), 4000)
    img = np.zeros((size, size), bool)
    img[np.rint(size / 2 + radius * np.sin(t)).astype(int), np.rint(size / 2 + radius * np.cos(t)).astype(int)] = True
    return skeletonize(img)


def test_tortuosity_of_straight_line_and_half_circle() -> None:
    """Arc/chord is 1 for a line and pi/2 for a half circle; the curvature measure is 1/rho^2 * R^2."""
    line = np.zeros((300, 300), bool)
    line[150, 20:280] = True
    d_line, c_line = ix.tortuosity(line, fov_radius=100.0)
    assert d_line == pytest.approx(1.0, abs=1e-3)
    assert c_line == pytest.approx(0.0, abs=1e-3)
    half = _arc(100, 180)
    d_half, c_half = ix.tortuosity(half, fov_radius=100.0)
    assert d_half == pytest.approx(math.pi / 2, rel=0.03)
    # mean squared curvature of a circle of radius 100 is 1e-4; times R^2 = 1e4 gives 1 (ends smooth a little)
    assert c_half == pytest.approx(1.0, rel=0.25)


def test_segments_are_cut_at_branch_points() -> None:
    """A T junction gives three segments between the branch point and the ends."""
    t = np.zeros((120, 120), bool)
    t[20, 10:110] = True
    t[20:110, 60] = True
    segs = ix.vessel_segments(t, min_length=8)
    assert len(segs) == 3
    lengths = sorted(len(s) for s in segs)
    assert lengths == pytest.approx([48, 48, 88], abs=3)


def test_artery_vein_indices_from_a_label_map() -> None:
    """Widths of a 3-px artery (label 1) and a 5-px vein (label 2) and their ratio."""
    av = np.zeros((100, 100), np.uint8)
    av[20:23, 5:95] = 1
    av[60:65, 5:95] = 2
    out = ix.artery_vein_indices(av, np.ones_like(av, bool))
    assert out["artery_width_px"] == pytest.approx(3.0, abs=0.3)
    assert out["vein_width_px"] == pytest.approx(5.0, abs=0.3)
    assert out["artery_vein_width_ratio"] == pytest.approx(0.6, abs=0.07)


def test_disc_and_cup_of_a_drawn_disc() -> None:
    """A bright disc of radius 20 with a paler cup of radius 10 on a dim background: CDR 0.5."""
    rgb = np.full((200, 200, 3), (150, 60, 25), np.uint8)
    rgb[draw_disk((90, 120), 20)] = (230, 150, 80)
    rgb[draw_disk((90, 120), 10)] = (250, 220, 200)
    fov = np.zeros((200, 200), bool)
    fov[draw_disk((100, 100), 95)] = True
    out = ix.disc_cup(rgb, fov)
    assert (out["disc_row"], out["disc_col"]) == pytest.approx((90, 120), abs=6)
    assert out["disc_diameter_px"] == pytest.approx(41, abs=3)
    assert out["cup_to_disc"] == pytest.approx(0.5, abs=0.06)
