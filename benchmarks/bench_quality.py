"""Quality gate benchmark: planted-copy recall / false positives, FD ranking, and 100k-scale memory.

Usage: python benchmarks/bench_quality.py [--quick] [--audit-only] [--fd-encoder DIR] [--real-only NAME...]
       > docs/bench/quality.json

0. Planted copies in real data (`real_planted`): for each real set in ../shared/data (RetinaMNIST, CSDI, pneumonia
   CXR, CHASE_DB1), disguised copies of its training images among held-out real images and phantoms of its
   modality, at the audit's default settings; recall per transform and false positives per source.

1. Planted copies: 128 px fundus phantoms; real train / real held-out / genuine synthetic from different
   seeds; copies of random training images (exact, h-flip, v-flip, 90% crop, JPEG q70, colour jitter)
   planted among the genuine ones. Recall per transform and false positives on the genuine images, for
   the audit's pixel score, against two baselines in the same run: the raw best NCC (no score
   normalisation) and cosine similarity in a random-init encoder's feature space, each thresholded the
   same way (held-out real max + margin).
2. FD ranking: reference vs same-distribution / colour-shifted / no-DR-lesion sets (3 draws of each, at 128 and
   at 1000 images per set) in a random-init ViT and, with --fd-encoder DIR, in a trained encoder
   (bench_probe_gain.py --save-encoder DIR).
3. Scale: FD (streamed moments) and the feature-space nearest-neighbour audit (blocked exact search) on
   100k x 100k synthetic 128-d feature vectors in memory-mapped .npy files, each stage in its own process
   with its peak RSS; the image -> feature + grey-map pass is measured separately on a phantom card.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    """Peak resident set size of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def planted(n_train: int, n_held: int, n_gen: int, per_kind: int) -> dict:
    """Recall per transform and false-positive rate of the audit and two baselines."""
    from quality.conftest import TINY_SPACE, render
    from synthfm.quality.config import MemorisationConfig, SpaceConfig
    from synthfm.quality.features import build_space, grey_maps
    from synthfm.quality.memorisation import (
        AuditInputs,
        Centred,
        audit,
        band_name,
        feature_nearest,
        pixel_nearest,
        threshold,
    )
    from synthfm.quality.plant import plant

    t0 = time.time()
    train, held, gen = render(n_train, 128, 200), render(n_held, 128, 201), render(n_gen, 128, 202)
    render_s = time.time() - t0
    copies, src, kinds = plant(train, per_kind, seed=0)
    synth, real = np.concatenate([gen, copies]), np.concatenate([train, held])

    def maps(x: np.ndarray) -> np.ndarray:
        return grey_maps(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), 96).numpy()

    space = build_space(SpaceConfig(**TINY_SPACE), "fundus")
    feats = {k: np.concatenate([space(torch.from_numpy(x[i:i + 64]).permute(0, 3, 1, 2)).numpy()
                                for i in range(0, len(x), 64)]) for k, x in (("s", synth), ("r", real))}
    cfg = MemorisationConfig()
    tr, ho = np.arange(n_train), np.arange(n_train, n_train + n_held)
    inp = AuditInputs(maps(synth), maps(real), feats["s"], feats["r"], tr, ho, np.arange(len(synth)),
                      np.arange(len(real)))
    t0 = time.time()
    table, calib, _ = audit(inp, cfg)
    audit_s = time.time() - t0
    kinds_a = np.array(kinds)

    def figures(score: np.ndarray, thr: float) -> dict:
        flag = score > thr
        return {"recall": float(flag[n_gen:].mean()), "false_positive_rate": float(flag[:n_gen].mean()),
                **{f"recall_{k}": float(flag[n_gen:][kinds_a == k].mean()) for k in dict.fromkeys(kinds)}}

    pix_thr = calib.loc[calib["view"] == "pixel", "threshold"].tolist()
    # baseline 1: raw best NCC of the finest band, calibrated the same way (held-out quantile + margin)
    mean = Centred(inp.real_maps, tr, cfg, True).fit_mean()
    raw_thr = threshold(pixel_nearest(inp.real_maps, ho, inp.real_maps, tr, cfg, mean)[0].similarity, cfg)
    # baseline 2: feature-space cosine similarity of a random-init encoder
    fh = feature_nearest(feats["r"], ho, feats["r"], tr, cfg)
    fs = feature_nearest(feats["s"], np.arange(len(synth)), feats["r"], tr, cfg)
    cos_thr = threshold(fh.similarity, cfg)
    return {
        "images": {"real_train": n_train, "real_heldout": n_held, "genuine_synthetic": n_gen,
                   "planted": len(copies), "size_px": 128, "pixel_size": cfg.pixel_size},
        "render_s": round(render_s, 1), "audit_s": round(audit_s, 1),
        "audit_pixel": {**figures(table["pixel_flag"].to_numpy().astype(float), 0.5), "thresholds": pix_thr},
        "audit_flagged_any_view": figures(table["flagged"].to_numpy().astype(float), 0.5),
        "source_found": float((table["pixel_real_row"].to_numpy()[n_gen:] == src).mean()),
        "baseline_raw_ncc": {**figures(table[f"pixel_similarity_{band_name(cfg.bands[0])}"].to_numpy(), raw_thr),
                             "threshold": raw_thr},
        "baseline_feature_cosine": {**figures(fs.similarity, cos_thr), "threshold": cos_thr},
    }


REAL_SETS = {"retinamnist": 28, "csdi_cataract": 128, "pneumonia_kermany_224": 128, "chase_db1": 128}
REAL_KINDS = ("exact", "hflip", "vflip", "crop90", "jpeg70", "brighten")
MAX_REAL = 600  # images drawn from each real set (RetinaMNIST has 1600, the CXR set 1024), to keep the run short


def card_images(name: str, size: int) -> tuple[np.ndarray, str, np.ndarray]:
    """Every image of a shipped real card as uint8 (n, size, size, 3) (grey repeated), its modality and the patient
    of each image."""
    from synthfm.data.manifest import load_card
    from synthfm.quality.features import stream_images

    data = load_card(ROOT / "configs" / "cards" / f"{name}.yaml")
    out = np.zeros((len(data), size, size, data.channels), np.uint8)
    for pos, batch in stream_images(data, np.arange(len(data)), size, 64):
        out[pos] = batch.permute(0, 2, 3, 1).numpy()
    return (np.repeat(out, 3, -1) if out.shape[-1] == 1 else out), data.card.modality, data.patient_ids().to_numpy()


def phantoms(modality: str, n: int, size: int, seed: int) -> tuple[np.ndarray, str]:
    """Genuine generated images of the card's modality: fundus or chest X-ray phantoms (no trained generator)."""
    from synthfm.synth.cxr import CXRPhantom
    from synthfm.synth.fundus import FundusPhantom
    from synthfm.synth.writer import image_seed

    gen = CXRPhantom() if modality == "cxr" else FundusPhantom()
    imgs = [gen.generate({}, image_seed(seed, i), size).image for i in range(n)]
    imgs = [np.repeat(i[..., None], 3, -1) if i.ndim == 2 else i for i in imgs]
    return np.stack(imgs), gen.name if hasattr(gen, "name") else type(gen).__name__


def real_planted(name: str, per_kind: int, n_generated: int) -> dict:
    """The audit at default settings on one real set: planted copies of its training images among held-out real
    images and phantoms of its modality.

    At most MAX_REAL of the card's images are drawn, then split at random (seed 0) by patient (the card's
    metadata.patient_id; by image without one) into about 60% training images (the audit's index), 20% held-out
    images that calibrate it, and 20% held-out images passed in as if synthetic: a held-out image of a training
    patient (a follow-up X-ray) is that patient's data, not an unrelated real image,
    together with `n_generated` phantoms and `per_kind` disguised copies per transform (recall). False positives
    are counted on the phantoms and on the second held-out part; a held-out image that the audit's own rule calls
    a real-vs-real duplicate of a training image (pixel similarity >= duplicate_similarity) is counted apart, as
    a data finding.
    """
    from synthfm.data.splits import patient_cuts
    from synthfm.quality.config import MemorisationConfig
    from synthfm.quality.features import grey_maps
    from synthfm.quality.memorisation import AuditInputs, audit, band_name
    from synthfm.quality.plant import plant

    size = REAL_SETS[name]
    images, modality, patients = card_images(name, size)
    gen, gen_name = phantoms(modality, n_generated, size, 400)
    tr, ca, te = patient_cuts(patients, [0.6, 0.8], 0, MAX_REAL)
    n_tr, n_ca = len(tr), len(ca)
    copies, _src, kinds = plant(images[tr], per_kind, seed=0, kinds=REAL_KINDS) if per_kind <= n_tr else \
        plant(np.concatenate([images[tr]] * -(-per_kind // n_tr)), per_kind, 0, REAL_KINDS)
    synth = np.concatenate([gen, images[te], copies])
    cfg = MemorisationConfig.model_validate(json.loads(os.environ.get("BENCH_MEMORISATION", "{}")))

    def maps(x: np.ndarray) -> np.ndarray:
        return grey_maps(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), cfg.pixel_size).numpy()

    real_rows = np.concatenate([tr, ca])
    inp = AuditInputs(maps(synth), maps(images[real_rows]), None, None, np.arange(n_tr),
                      np.arange(n_tr, len(real_rows)), np.arange(len(synth)), real_rows)
    t0 = time.time()
    table, calib, heldout = audit(inp, cfg)
    audit_s = time.time() - t0
    if os.environ.get("BENCH_DUMP"):  # per-image similarities and scores, for choosing the audit's defaults
        dump = Path(os.environ["BENCH_DUMP"])
        dump.mkdir(parents=True, exist_ok=True)
        table.assign(role=["generated"] * len(gen) + ["heldout"] * len(te) + list(kinds)).to_csv(
            dump / f"{name}_queries.csv", index=False)
        heldout.to_csv(dump / f"{name}_calibration.csv", index=False)
    flagged = table["flagged"].to_numpy()
    g, h = len(gen), len(te)
    held_flag = flagged[g:g + h]
    sims = table[[f"pixel_similarity_{band_name(b)}" for b in cfg.bands]].to_numpy()
    held_dup = sims[g:g + h].max(1) >= cfg.duplicate_similarity
    cop = flagged[g + h:]
    kinds_a = np.array(kinds)
    return {
        "images": {"size_px": size, "real_images_drawn": n_tr + n_ca + h, "real_train": n_tr,
                   "split": "by patient" if len(np.unique(patients)) < len(patients) else "by image",
                   "real_heldout_calibration": n_ca,
                   "real_heldout_queries": h, "generated": g,
                   "generated_by": f"{gen_name} (no trained generator: training one per set does not fit this "
                                   "2-core CPU benchmark; phantoms stand in)",
                   "planted": len(copies)},
        "audit_s": round(audit_s, 1), "audit_ms_per_query": round(1000 * audit_s / len(synth), 1),
        "recall": float(cop.mean()), **{f"recall_{k}": float(cop[kinds_a == k].mean()) for k in REAL_KINDS},
        "false_positive_rate_generated": float(flagged[:g].mean()),
        "false_positive_rate_heldout_real": float(held_flag.mean()),
        "false_positive_rate_heldout_real_without_duplicates": float(held_flag[~held_dup].mean()),
        "heldout_real_duplicates": int(held_dup.sum()),
        "calibration_real_duplicate_pairs": int(heldout["duplicate"].sum()),
        "heldout_real_duplicate_card_rows": [[int(a), int(b)] for a, b in zip(
            te[held_dup], table["pixel_real_id"].iloc[g:g + h][held_dup], strict=True)],
        "thresholds": dict(zip(calib["band"], calib["threshold"].round(4), strict=True)),
        "flagged_by_band": table.loc[flagged, "pixel_band"].value_counts().to_dict(),
        "goal_met": bool(cop.mean() >= 0.99 and flagged[:g].mean() <= 0.01 and held_flag[~held_dup].mean() <= 0.01),
    }


def fd_ranking(n: int, draws: int, encoder: str | None) -> dict:
    """FD of same-distribution, colour-shifted and lesion-free sets against a reference, per feature space.

    Each kind of set is drawn `draws` times from fresh image seeds, so the spread of FD_same shows the
    sampling noise; a space ranks the sets correctly when every same-distribution FD is below every
    colour-shifted and every lesion-free FD. Spaces: the random-init tiny ViT of the tests and, with
    `encoder` (a save_pretrained dir, e.g. from bench_probe_gain.py --save-encoder), a trained encoder.
    """
    from quality.conftest import TINY_SPACE, render
    from synthfm.quality.config import SpaceConfig
    from synthfm.quality.features import build_space
    from synthfm.quality.fidelity import frechet_distance

    lesions = {"dr_grade": [0.0, 0.0, 0.0, 0.5, 0.5]}
    ref = render(n, 64, 300, **lesions)
    sets: dict[str, list[np.ndarray]] = {"same": [], "colour_shift": [], "no_dr_lesions": []}
    for d in range(draws):
        same = render(n, 64, 301 + d, **lesions)
        sets["same"].append(same)
        sets["colour_shift"].append(np.clip(same * np.array([0.85, 1.0, 1.25]), 0, 255).astype(np.uint8))
        sets["no_dr_lesions"].append(render(n, 64, 301 + d, dr_grade=[1.0, 0, 0, 0, 0]))
    configs = [SpaceConfig(**TINY_SPACE)] + ([SpaceConfig(encoder=encoder)] if encoder else [])
    out: dict = {"n": n, "draws": draws, "reference": "DR grade 3-4 phantoms at 64 px", "spaces": {}}
    for cfg in configs:
        space = build_space(cfg, "fundus")

        def f(x: np.ndarray, space=space) -> np.ndarray:
            return np.concatenate([space(torch.from_numpy(x[i:i + 64]).permute(0, 3, 1, 2)).numpy()
                                   for i in range(0, len(x), 64)])

        r = f(ref)
        fd = {k: [round(frechet_distance(f(x), r), 5) for x in xs] for k, xs in sets.items()}
        out["spaces"][space.name] = {**{f"FD_{k}": v for k, v in fd.items()},
                                     "ranks_correctly": {k: max(fd["same"]) < min(fd[k])
                                                         for k in ("colour_shift", "no_dr_lesions")}}
    return out


def stage(name: str, args: list[str]) -> dict:
    """One measured stage, run in a child process (`--stage NAME ARGS`): its result, the peak RSS after the
    imports (torch, timm, ...) and the peak RSS at the end - the difference is what the stage itself held."""
    import synthfm.quality.run  # noqa: F401  (everything the stages import, so the baseline includes it)

    base = rss_mb()
    t = time.time()
    if name == "fd":
        from synthfm.quality.fidelity import frechet_distance

        a, b = (np.load(p, mmap_mode="r") for p in args)
        out: dict = {"FD": frechet_distance(a, b)}
    elif name == "nn_audit":
        from synthfm.quality.config import MemorisationConfig
        from synthfm.quality.memorisation import feature_nearest

        a, b = (np.load(p, mmap_mode="r") for p in args)
        train = np.arange(len(b) - len(b) // 10)
        r = feature_nearest(a, np.arange(len(a)), b, train, MemorisationConfig(chunk=4096))
        out = {"queries": len(a), "index": len(train), "mean_best_cosine": float(r.similarity.mean())}
    else:
        out = stream_card(int(args[0]), t)
    return {**out, "seconds": round(time.time() - t, 1), "rss_after_imports_mb": round(base, 1),
            "peak_rss_mb": round(rss_mb(), 1)}


def stream_card(n: int, t0: float) -> dict:
    """Render a phantom card, then time the one streamed pass writing features and grey maps."""
    from synthfm.data.manifest import load_card
    from synthfm.quality.config import SpaceConfig
    from synthfm.quality.features import build_space, extract
    from synthfm.synth.writer import PhantomConfig, render_phantom

    tmp = Path(tempfile.mkdtemp())
    data = load_card(render_phantom(tmp / "card", PhantomConfig(n=n, size=128, seed=5)))
    space = build_space(SpaceConfig(encoder="random:vit_tiny_p8_64"), "fundus")
    t = time.time()
    extract(data, np.arange(n), [space], 96, tmp / "cache", "s", 64)
    return {"images": n, "size_px": 128, "space": space.name, "stream_seconds": round(time.time() - t, 1),
            "images_per_s": round(n / (time.time() - t), 1), "render_seconds": round(t - t0, 1)}


def child(name: str, *args: str) -> dict:
    """Run a stage in a fresh process (so its peak RSS is its own)."""
    res = subprocess.run([sys.executable, __file__, "--stage", name, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def scale(n: int, d: int) -> dict:
    """FD and the feature NN audit on n x n memory-mapped feature vectors, each in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, shift in (("a", 0.0), ("b", 0.1)):
            p = Path(tmp) / f"{k}.npy"
            arr = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, d))
            rng = np.random.default_rng(len(paths))
            for i in range(0, n, 10_000):
                arr[i:i + 10_000] = rng.normal(shift, 1.0, (min(10_000, n - i), d)).astype(np.float32)
            arr.flush()
            del arr
            paths.append(str(p))
        return {"n": n, "dim": d, "feature_file_mb": round(n * d * 4 / 2**20, 1),
                "full_distance_matrix_gb": round(n * n * 4 / 2**30, 1),
                "fd": child("fd", *paths), "nn_audit": child("nn_audit", *paths)}


def main() -> None:
    """Run every part and print one JSON document."""
    quick = "--quick" in sys.argv
    torch.set_num_threads(2)
    doc = {"benchmark": "quality", "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores",
           "python": platform.python_version(), "torch": torch.__version__,
           "baseline": "raw best NCC without score normalisation, and random-init encoder cosine similarity, "
                       "calibrated the same way (held-out real quantile + margin of the audit's config)"}
    real_sets = sys.argv[sys.argv.index("--real-only") + 1:] if "--real-only" in sys.argv else list(REAL_SETS)
    doc["planted_copies_real"] = {n: real_planted(n, *((10, 50) if quick else (40, 200))) for n in real_sets}
    doc["planted_copies_real_goal_met"] = all(d["goal_met"] for d in doc["planted_copies_real"].values())
    doc["load_avg_1min"] = round(os.getloadavg()[0], 2)
    if "--real-only" in sys.argv:
        print(json.dumps(doc, indent=2))
        return
    doc["planted_copies"] = planted(*((80, 60, 80, 10) if quick else (300, 200, 300, 50)))
    if "--audit-only" in sys.argv:  # the audit's parts alone (FD ranking and the 100k scale runs are left out)
        print(json.dumps(doc, indent=2))
        return
    encoder = sys.argv[sys.argv.index("--fd-encoder") + 1] if "--fd-encoder" in sys.argv else None
    sizes = (48, 200) if quick else (128, 1000)
    doc["fd_ranking"] = {f"n{n}": fd_ranking(n, 2 if quick else 3, encoder) for n in sizes}
    doc["scale_features"] = scale(20_000 if quick else 100_000, 128)
    doc["image_stream"] = child("stream", str(100 if quick else 500))
    doc["base_rss_mb"] = round(rss_mb(), 1)
    doc["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(doc, indent=2))




if __name__ == "__main__":
    if "--stage" in sys.argv:
        k = sys.argv.index("--stage")
        print(json.dumps(stage(sys.argv[k + 1], sys.argv[k + 2:])))
    else:
        main()
