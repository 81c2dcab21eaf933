"""Tests of the procedural colour fundus phantom: geometry, labels, appearance and determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from synthfm.synth.base import PhantomSample
from synthfm.synth.fundus import (
    DR_LESION_KINDS,
    FUNDUS_METADATA,
    FUNDUS_TASKS,
    LESION_LABELS,
    FundusPhantom,
)

GEN = FundusPhantom()
CLEAR = {"cataract": 0, "amd": 0, "dr_grade": 0, "device": "topcon"}
DR_LABELS = [LESION_LABELS[k] for k in DR_LESION_KINDS]
MASKS = ("vessels", "artery_vein", "disc", "cup", "lesions", "fov")


def _gen(seed: int, size: int = 256, **condition: object) -> PhantomSample:
    """One sample of the default generator."""
    return GEN.generate(condition, seed=seed, size=size)


def _vertical_extent(mask: np.ndarray) -> int:
    """Number of image rows that contain the mask."""
    return int(mask.any(axis=1).sum())


def _path_length(seg: np.ndarray) -> float:
    """Length of a thin 8-connected pixel path: orthogonal steps count 1, diagonal steps sqrt(2)."""
    ortho = (seg[1:] & seg[:-1]).sum() + (seg[:, 1:] & seg[:, :-1]).sum()
    diag = (seg[1:, 1:] & seg[:-1, :-1]).sum() + (seg[1:, :-1] & seg[:-1, 1:]).sum()
    return float(ortho + math.sqrt(2) * diag)


def _skeleton_tortuosity(vessels: np.ndarray) -> float:
    """Mean arc/chord of the unbranched skeleton segments (>= 15 px) of a vessel mask."""
    skel = skeletonize(vessels > 0)
    neighbours = ndi.convolve(skel.astype(int), np.ones((3, 3), int), mode="constant") - 1
    segments, _ = ndi.label(skel & (neighbours <= 2), structure=np.ones((3, 3)))
    ratios = []
    for i, box in enumerate(ndi.find_objects(segments), start=1):
        seg = np.pad(segments[box] == i, 1)
        nb = ndi.convolve(seg.astype(int), np.ones((3, 3), int), mode="constant") - 1
        ends = np.argwhere(seg & (nb == 1))
        if seg.sum() >= 15 and len(ends) == 2:
            ratios.append(_path_length(seg) / max(float(np.hypot(*(ends[0] - ends[1]))), 1.0))
    return float(np.mean(ratios))


# ----------------------------------------------------------------------------- API and contract


def test_tasks_and_metadata_vocabulary() -> None:
    """The label and metadata vocabularies are exactly the documented ones."""
    assert FUNDUS_TASKS == {
        "dr_grade": ["0", "1", "2", "3", "4"],
        "amd": ["no", "yes"],
        "glaucoma": ["no", "yes"],
        "cataract": ["no", "yes"],
    }
    assert FUNDUS_METADATA["age"] == (20.0, 90.0)
    assert FUNDUS_METADATA["sex"] == ["F", "M"]
    assert FUNDUS_METADATA["ethnicity"] == ["white", "black", "asian", "south_asian", "hispanic"]
    assert FUNDUS_METADATA["device"] == ["topcon", "canon", "zeiss", "nidek", "smartphone"]
    assert FundusPhantom.name == "fundus_phantom"


@pytest.mark.parametrize("size", [64, 256, 512])
def test_sample_contract(size: int) -> None:
    """Image, masks, labels, metadata and params have the promised types, shapes and values."""
    s = _gen(5, size, dr_grade=4, amd=1)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert set(s.masks) == set(MASKS)
    for name, mask in s.masks.items():
        assert mask.shape == (size, size) and mask.dtype == np.uint8, name
    for name in ("vessels", "disc", "cup", "fov"):
        assert set(np.unique(s.masks[name])) <= {0, 1}, name
    assert set(np.unique(s.masks["artery_vein"])) <= {0, 1, 2}
    assert set(np.unique(s.masks["lesions"])) <= set(range(7))
    assert (s.masks["artery_vein"] > 0).sum() == s.masks["vessels"].sum()
    assert s.labels == {"dr_grade": 4, "amd": 1, "glaucoma": s.labels["glaucoma"], "cataract": s.labels["cataract"]}
    assert all(isinstance(v, int) and 0 <= v < len(FUNDUS_TASKS[k]) for k, v in s.labels.items())
    assert isinstance(s.metadata["age"], float) and 20 <= s.metadata["age"] <= 90
    assert s.metadata["sex"] in FUNDUS_METADATA["sex"]
    assert s.metadata["ethnicity"] in FUNDUS_METADATA["ethnicity"]
    assert s.metadata["device"] in FUNDUS_METADATA["device"]
    assert json.loads(json.dumps(s.params)) == s.params
    for key in (
        "cup_to_disc",
        "disc_centre_px",
        "disc_radius_px",
        "vessel_calibre",
        "vessel_branching",
        "vessel_tortuosity",
        "lesion_counts",
        "age",
        "device",
        "jpeg_quality",
        "n_branch_points",
    ):
        assert key in s.params or key in s.params["condition"], key
    assert set(s.params["lesion_counts"]) == set(LESION_LABELS)


def test_same_seed_same_bytes_other_seed_differs() -> None:
    """The same (condition, seed, size) gives byte-identical arrays; another seed another image."""
    a, b = _gen(11, dr_grade=3), _gen(11, dr_grade=3)
    c = _gen(12, dr_grade=3)
    assert a.image.tobytes() == b.image.tobytes()
    assert all(a.masks[k].tobytes() == b.masks[k].tobytes() for k in MASKS)
    assert json.dumps(a.params) == json.dumps(b.params)
    assert a.image.tobytes() != c.image.tobytes()
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 2


def test_missing_keys_drawn_per_seed_and_labels_leave_anatomy_alone() -> None:
    """Missing keys come from the seed; changing one label keeps the rest of the eye (own streams)."""
    a, b = _gen(21, glaucoma=0), _gen(21, glaucoma=1)
    assert a.metadata == b.metadata and a.labels["dr_grade"] == b.labels["dr_grade"]
    assert np.array_equal(a.masks["vessels"], b.masks["vessels"])
    assert np.array_equal(a.masks["disc"], b.masks["disc"])
    assert b.masks["cup"].sum() > a.masks["cup"].sum()
    metas = {json.dumps(_gen(seed, 64).metadata) for seed in range(6)}
    assert len(metas) > 1


def test_unknown_condition_key_raises_naming_it() -> None:
    """An unknown key is an error that names it and lists the allowed keys."""
    with pytest.raises(ValueError, match="retinopathy") as err:
        GEN.generate({"retinopathy": 2}, seed=0, size=64)
    assert "dr_grade" in str(err.value) and "vessel_tortuosity" in str(err.value)


@pytest.mark.parametrize(
    "condition",
    [
        {"dr_grade": 5},
        {"sex": "X"},
        {"age": 150.0},
        {"device": "iphone"},
        {"cup_to_disc": 1.5},
        {"vessel_tortuosity": -1.0},
        {"amd": "maybe"},
    ],
)
def test_bad_condition_values_raise(condition: dict[str, object]) -> None:
    """Out-of-vocabulary or out-of-range values are errors naming the key."""
    with pytest.raises(ValueError, match=next(iter(condition))):
        GEN.generate(condition, seed=0, size=64)


def test_labels_accept_class_names() -> None:
    """Task values may be given as class names as well as indices."""
    s = _gen(2, 64, dr_grade="3", glaucoma="yes", amd="no")
    assert s.labels["dr_grade"] == 3 and s.labels["glaucoma"] == 1 and s.labels["amd"] == 0


def test_sample_condition_priors_are_realistic() -> None:
    """Most eyes have no DR, ages centre near 60 within 20-90, and every value is in its vocabulary."""
    rng = np.random.default_rng(0)
    conds = [GEN.sample_condition(rng) for _ in range(600)]
    grades = np.bincount([c["dr_grade"] for c in conds], minlength=5)
    ages = np.array([c["age"] for c in conds])
    assert grades[0] / len(conds) > 0.6 and grades[4] < grades[0]
    assert 55 < ages.mean() < 65 and ages.min() >= 20 and ages.max() <= 90
    assert {c["device"] for c in conds} == set(FUNDUS_METADATA["device"])
    assert all(c["ethnicity"] in FUNDUS_METADATA["ethnicity"] for c in conds)
    assert 0.02 < np.mean([c["glaucoma"] for c in conds]) < 0.2
    s = GEN.generate(conds[0], seed=0, size=64)
    assert {**s.labels, **s.metadata} == conds[0]


def test_prior_overrides_and_unknown_override() -> None:
    """Constructor overrides change the priors; unknown or malformed ones are errors."""
    sick = FundusPhantom(dr_grade=[0, 0, 0, 0, 1.0], glaucoma=1.0)
    cond = sick.sample_condition(np.random.default_rng(1))
    assert cond["dr_grade"] == 4 and cond["glaucoma"] == 1
    with pytest.raises(ValueError, match="prevalance"):
        FundusPhantom(prevalance=0.1)
    with pytest.raises(ValueError, match="dr_grade"):
        FundusPhantom(dr_grade=[0.5, 0.5])


# ----------------------------------------------------------------------------- optic disc and cup


@pytest.mark.parametrize("cdr", [0.25, 0.4, 0.55, 0.7, 0.85])
def test_cup_to_disc_ratio_measured_from_masks(cdr: float) -> None:
    """Vertical cup/disc diameter ratio (and sqrt of the area ratio) from the masks equals the parameter."""
    for seed in range(3):
        s = _gen(seed, cup_to_disc=cdr)
        disc_rows, cup_rows = _vertical_extent(s.masks["disc"]), _vertical_extent(s.masks["cup"])
        assert s.params["cup_to_disc"] == pytest.approx(cdr)
        assert abs(cup_rows / disc_rows - cdr) <= 2.0 / disc_rows
        assert abs(math.sqrt(s.masks["cup"].sum() / s.masks["disc"].sum()) - cdr) <= 1.5 / disc_rows
        assert not (s.masks["cup"] & (1 - s.masks["disc"])).any()


def test_glaucoma_has_larger_cup() -> None:
    """Glaucoma draws cup-to-disc 0.6-0.85 versus 0.2-0.45 without; the masks agree."""

    def ratios(glaucoma: int) -> np.ndarray:
        out = []
        for seed in range(10):
            s = _gen(100 + seed, 128, glaucoma=glaucoma)
            out.append((s.params["cup_to_disc"], math.sqrt(s.masks["cup"].sum() / s.masks["disc"].sum())))
        return np.array(out)

    healthy, glaucoma = ratios(0), ratios(1)
    assert healthy[:, 0].min() >= 0.2 and healthy[:, 0].max() <= 0.45
    assert glaucoma[:, 0].min() >= 0.6 and glaucoma[:, 0].max() <= 0.85
    assert glaucoma[:, 1].mean() > healthy[:, 1].mean() + 0.2


def test_disc_on_nasal_side_and_fovea_temporal() -> None:
    """The disc sits right of centre in OD, left in OS; the fovea ~2.5 disc diameters temporal and darker."""
    for seed in range(8):
        s = _gen(seed, **CLEAR)
        p = s.params
        dx = p["disc_centre_px"][0] - p["fov_centre_px"][0]
        assert dx > 0 if p["eye"] == "OD" else dx < 0
        assert np.sign(p["fovea_centre_px"][0] - p["disc_centre_px"][0]) == -np.sign(dx)
        dist = math.dist(p["fovea_centre_px"], p["disc_centre_px"]) / (2 * p["disc_radius_px"])
        assert 2.2 < dist < 2.9
        yy, xx = np.mgrid[:256, :256]
        r = np.hypot(xx - p["fovea_centre_px"][0], yy - p["fovea_centre_px"][1])
        green = s.image[..., 1].astype(float)
        free = s.masks["vessels"] == 0
        assert green[(r < 6) & free].mean() < green[(r > 25) & (r < 40) & free].mean()


# ----------------------------------------------------------------------------- lesions


def _dr_components(s: PhantomSample) -> int:
    """Connected components of every DR lesion kind in the lesion map."""
    return sum(int(ndi.label(s.masks["lesions"] == lab)[1]) for lab in DR_LABELS)


def test_dr_lesion_counts_rise_with_grade() -> None:
    """Mean lesion components (mask) and instances (params) over 10 seeds rise strictly from grade 0 to 4."""
    comps, counts = [], []
    for grade in range(5):
        samples = [_gen(300 + seed, dr_grade=grade, amd=0) for seed in range(10)]
        comps.append(np.mean([_dr_components(s) for s in samples]))
        counts.append(np.mean([sum(s.params["lesion_counts"][k] for k in DR_LESION_KINDS) for s in samples]))
        if grade == 0:
            assert all(not np.isin(s.masks["lesions"], DR_LABELS).any() for s in samples)
    assert counts[0] == 0 and comps[0] == 0
    assert all(np.diff(comps) > 0), comps
    assert all(np.diff(counts) > 0), counts


def test_lesion_kinds_follow_the_grading_scale() -> None:
    """Grade 1 is microaneurysms only; grade 4 adds neovascularisation; grade 3 has haemorrhages."""
    g1 = _gen(7, dr_grade=1, amd=0)
    assert set(np.unique(g1.masks["lesions"])) <= {0, LESION_LABELS["microaneurysm"]}
    assert g1.params["lesion_counts"]["microaneurysm"] >= 2
    g3 = _gen(7, dr_grade=3, amd=0)
    assert (g3.masks["lesions"] == LESION_LABELS["haemorrhage"]).any()
    assert g3.params["venous_beading"] > 0
    g4 = [_gen(seed, dr_grade=4, amd=0) for seed in range(3)]
    assert all((s.masks["lesions"] == LESION_LABELS["neovascularisation"]).any() for s in g4)


def test_red_and_yellow_lesions_have_their_colour() -> None:
    """Haemorrhages are darker than the retina around them; exudates are brighter and yellow."""
    s = _gen(9, dr_grade=3, amd=0, cataract=0, device="topcon")
    img = s.image.astype(float)
    lesions = s.masks["lesions"]
    retina = (s.masks["fov"] > 0) & (lesions == 0) & (s.masks["vessels"] == 0) & (s.masks["disc"] == 0)
    haem, exu = lesions == LESION_LABELS["haemorrhage"], lesions == LESION_LABELS["exudate"]
    assert img[haem][:, 1].mean() < img[retina][:, 1].mean()
    if exu.any():
        assert img[exu][:, 1].mean() > img[retina][:, 1].mean() + 15
        assert img[exu][:, 0].mean() > img[exu][:, 2].mean()


def test_amd_draws_drusen_around_the_fovea() -> None:
    """AMD puts drusen (label 5) near the fovea; no AMD, no drusen."""
    yes, no = _gen(4, amd=1, dr_grade=0), _gen(4, amd=0, dr_grade=0)
    drusen = yes.masks["lesions"] == LESION_LABELS["drusen"]
    assert drusen.any() and not (no.masks["lesions"] == LESION_LABELS["drusen"]).any()
    rows, cols = np.nonzero(drusen)
    fx, fy = yes.params["fovea_centre_px"]
    assert np.median(np.hypot(cols - fx, rows - fy)) < 3 * yes.params["disc_radius_px"]
    assert yes.params["lesion_counts"]["drusen"] >= 15


# ----------------------------------------------------------------------------- vessels


def test_vessel_fraction_plausible() -> None:
    """Vessels cover 5-15% of the field of view at 256 px."""
    for seed in range(6):
        s = _gen(seed)
        frac = s.masks["vessels"][s.masks["fov"] > 0].mean()
        assert 0.05 <= frac <= 0.15, frac


def test_arteries_thinner_than_veins() -> None:
    """Mean distance-transform half-width over artery pixels is below that over vein pixels."""
    widths = []
    for seed in range(6):
        av = _gen(seed, 512).masks["artery_vein"]
        widths.append([ndi.distance_transform_edt(av == k)[av == k].mean() for k in (1, 2)])
    widths = np.array(widths)
    assert widths[:, 0].mean() < widths[:, 1].mean()
    assert (widths[:, 0] < widths[:, 1]).mean() >= 0.8


def test_vessels_darker_in_green_and_black_outside_fov() -> None:
    """Vessel pixels are darker than the background in green; outside the field is exactly black."""
    for seed in range(5):
        s = _gen(seed, **CLEAR)
        green = s.image[..., 1].astype(float)
        fov = s.masks["fov"] > 0
        vessel = s.masks["vessels"] > 0
        background = fov & ~vessel & (s.masks["disc"] == 0)
        assert green[vessel & (s.masks["disc"] == 0)].mean() < green[background].mean() - 3
        assert not s.image[~fov].any()
        radius = s.params["fov_radius_px"]
        assert fov.sum() == pytest.approx(math.pi * radius**2, rel=0.02)


def test_more_branching_more_vessel() -> None:
    """Raising vessel_branching adds branch points and vessel pixels (same seed)."""
    for seed in range(4):
        few, many = _gen(seed, vessel_branching=1), _gen(seed, vessel_branching=3)
        assert many.params["n_branch_points"] > few.params["n_branch_points"]
        assert many.masks["vessels"].sum() > few.masks["vessels"].sum()


def test_more_tortuosity_more_tortuous() -> None:
    """Raising vessel_tortuosity raises arc/chord, both of the drawn polylines and of the mask skeleton."""
    low = [_gen(seed, 512, vessel_tortuosity=0.05, vessel_branching=1) for seed in range(3)]
    high = [_gen(seed, 512, vessel_tortuosity=1.2, vessel_branching=1) for seed in range(3)]
    for a, b in zip(low, high, strict=True):
        assert b.params["tortuosity_index"] > a.params["tortuosity_index"]
    assert np.mean([_skeleton_tortuosity(s.masks["vessels"]) for s in high]) > np.mean(
        [_skeleton_tortuosity(s.masks["vessels"]) for s in low]
    )


def test_calibre_scales_vessel_width() -> None:
    """vessel_calibre scales trunk radii and the vessel area."""
    thin, thick = _gen(3, vessel_calibre=0.7), _gen(3, vessel_calibre=1.4)
    assert thick.params["vein_trunk_radius_px"] == pytest.approx(2 * thin.params["vein_trunk_radius_px"])
    assert thick.masks["vessels"].sum() > 1.3 * thin.masks["vessels"].sum()


# ----------------------------------------------------------------------------- appearance


@pytest.mark.parametrize("ethnicity", FUNDUS_METADATA["ethnicity"])
def test_colour_order_and_range(ethnicity: str) -> None:
    """Inside the FOV mean red > green > blue, within the range of real fundus photographs."""
    for device in FUNDUS_METADATA["device"]:
        s = _gen(1, 128, ethnicity=ethnicity, device=device, cataract=0)
        r, g, b = s.image[s.masks["fov"] > 0].reshape(-1, 3).mean(axis=0)
        assert r > g > b, (device, r, g, b)
        assert 80 < r < 215 and 35 < g < 125 and 8 < b < 70, (device, r, g, b)


def test_pigmentation_darker_for_black_than_white() -> None:
    """Darker fundus (lower red/green reflectance) for black than white eyes, the rest equal."""

    def mean_red(ethnicity: str) -> float:
        return float(
            np.mean([_gen(s, 128, ethnicity=ethnicity, **CLEAR).params["fundus_reflectance"][0] for s in range(5)])
        )

    assert mean_red("black") < mean_red("white") - 0.15


def test_cataract_blurs_and_yellows() -> None:
    """Cataract lowers fine contrast (gradient energy) and raises green/red (yellow veil), same eye."""

    def sharpness(img: np.ndarray) -> float:
        green = img[..., 1].astype(float)
        return float(np.abs(np.diff(green, axis=0)).mean() + np.abs(np.diff(green, axis=1)).mean())

    for seed in range(3):
        clear, hazy = _gen(seed, cataract=0, device="topcon"), _gen(seed, cataract=1, device="topcon")
        fov = clear.masks["fov"] > 0
        assert sharpness(hazy.image) < sharpness(clear.image)
        ratio = [s.image[fov][:, 1].mean() / s.image[fov][:, 0].mean() for s in (clear, hazy)]
        assert ratio[1] > ratio[0]
        assert hazy.params["cataract_severity"] > 0 == clear.params["cataract_severity"]


def test_age_narrows_arteries_and_yellows_lens() -> None:
    """Older eyes: lower artery/vein ratio and more lens yellowing, other things equal."""
    young, old = _gen(6, age=25.0, cataract=0), _gen(6, age=85.0, cataract=0)
    assert old.params["artery_vein_ratio"] < young.params["artery_vein_ratio"]
    assert old.params["lens_yellowing"] > young.params["lens_yellowing"]


def test_device_sets_jpeg_quality_and_resolution() -> None:
    """Devices differ in JPEG quality and effective resolution; smartphones are the poorest."""
    phone, topcon = _gen(2, 128, device="smartphone"), _gen(2, 128, device="topcon")
    assert phone.params["jpeg_quality"] < topcon.params["jpeg_quality"]
    assert phone.params["effective_resolution"] < topcon.params["effective_resolution"]
    assert phone.params["blur_px"] > topcon.params["blur_px"]
