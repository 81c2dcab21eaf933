"""The diffusion generator kind through the whole kit: site training, bundle, hub checks, hub sampling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthfm.consortium.compose import ComposeConfig, compose
from synthfm.consortium.generators import load_generator, read_generator_config
from synthfm.consortium.site import SiteConfig, run_site
from synthfm.consortium.verify import BundleRejected, VerifyConfig, verify_bundle
from synthfm.data.manifest import load_card

from .conftest import SIZE, resign

TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention": [False, False], "norm_num_groups": 8}
OPTIONS = {"steps": 2, "batch_size": 8, "diffusion": {"unet": TINY_UNET, "train_timesteps": 50},
           "sampler": {"name": "ddim", "steps": 2}}
HUB = VerifyConfig(min_k=5)


@pytest.fixture(scope="module")
def diffusion_bundle(site_card: Path, keys: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site_b trains a (tiny) conditional diffusion generator and exports it."""
    cfg = SiteConfig(site="site_b", card=str(site_card), summary={"k": 5}, audit={"n_samples": 8}, verify=HUB,
                     generator={"kind": "diffusion", "size": SIZE, "options": OPTIONS})
    return run_site(cfg, keys["site_b"], tmp_path_factory.mktemp("diffusion_site"))


def test_diffusion_bundle_verifies_without_the_training_table(diffusion_bundle: Path, keys: dict,
                                                              tmp_path: Path) -> None:
    v = verify_bundle(diffusion_bundle, keys["hub"], HUB)
    assert v.info.generator.kind == "diffusion" and read_generator_config(v.generator_dir)["kind"] == "diffusion"
    info = json.loads((diffusion_bundle / "generator" / "generator.json").read_text())
    assert isinstance(info["training"], str) and "withheld" in info["training"]
    assert {p.suffix for p in diffusion_bundle.rglob("*") if p.is_file()} <= {".json", ".safetensors"}
    leaky = Path(shutil.copytree(diffusion_bundle, tmp_path / "leaky"))
    gen_json = leaky / "generator" / "generator.json"
    gen_json.write_text(json.dumps({**info, "training": {"rows": 30, "joint": [[1, 2, 1, 1]], "ages": {}}}))
    resign(leaky, keys["site_b"])
    with pytest.raises(BundleRejected, match=r"\[small-cell\].*exact joint condition counts"):
        verify_bundle(leaky, keys["hub"], HUB)


def test_hub_samples_a_diffusion_bundle(diffusion_bundle: Path, keys: dict, tmp_path: Path) -> None:
    gen = load_generator(diffusion_bundle / "generator")
    a, _ = gen.sample([{"dr_grade": 1, "age": 50.0, "sex": "F", "unknown_key": 1}, {}], [3, 4])
    assert a.shape == (SIZE, SIZE, 3) and a.dtype.name == "uint8"
    again = gen.sample([{"dr_grade": 1, "age": 50.0, "sex": "F", "unknown_key": 1}, {}], [3, 4])[0]
    assert (again == a).all()  # seeded: the same call gives the same bytes
    alone = gen.sample([{"dr_grade": 1, "age": 50.0, "sex": "F"}], [3])[0]
    # In a batch of a different size the convolution kernels may sum in another order (seen on AVX-512 CPUs):
    # a float rounding difference that moves a few pixels by one grey level, never more.
    assert np.abs(alone.astype(int) - a).max() <= 1 and (alone != a).mean() < 0.01
    cfg = ComposeConfig(keys=str(keys["hub"]), bundles=[{"path": str(diffusion_bundle), "n": 4}], verify=HUB)
    df = load_card(compose(cfg, tmp_path / "c")).df
    assert len(df) == 4 and set(df["site"]) == {"site_b"} and set(df["origin"]) == {"synthetic"}


def test_diffusion_weights_must_match_the_declared_unet(diffusion_bundle: Path, keys: dict, tmp_path: Path) -> None:
    """A tensor the UNet built from model/config.json does not have (here an image) is refused, and a config
    that declares another architecture than the weights hold is too."""
    from safetensors.numpy import load_file, save_file

    from synthfm.consortium.generators import generator_hash

    def rehash_and_sign(bundle: Path) -> None:
        info = json.loads((bundle / "bundle.json").read_text())
        info["generator"]["hash"] = generator_hash(bundle / "generator")
        (bundle / "bundle.json").write_text(json.dumps(info))
        resign(bundle, keys["site_b"])

    smuggled = Path(shutil.copytree(diffusion_bundle, tmp_path / "smuggled"))
    weights = smuggled / "generator" / "model" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    save_file({**state, "patient": np.zeros((64, 64, 3), np.float32)}, str(weights))
    rehash_and_sign(smuggled)
    with pytest.raises(BundleRejected, match=r"\[tensor-shape\].*'patient' is not part of the declared"):
        verify_bundle(smuggled, keys["hub"], HUB)
    wider = Path(shutil.copytree(diffusion_bundle, tmp_path / "wider"))
    config = wider / "generator" / "model" / "config.json"
    cfg = json.loads(config.read_text())
    cfg["unet_config"]["block_out_channels"] = [32, 64]
    config.write_text(json.dumps(cfg))
    rehash_and_sign(wider)
    with pytest.raises(BundleRejected, match=r"\[tensor-shape\]"):
        verify_bundle(wider, keys["hub"], HUB)


def test_diffusion_generator_json_is_a_closed_schema(diffusion_bundle: Path, keys: dict, tmp_path: Path) -> None:
    from synthfm.consortium.generators import generator_hash

    for key, value, where in (("patient_notes", "Jane Doe, MRN 3", "patient_notes: Extra inputs"),
                              ("image_size", 4096, "image_size: Input should be less than or equal to 2048")):
        bad = Path(shutil.copytree(diffusion_bundle, tmp_path / key))
        gen_json = bad / "generator" / "generator.json"
        gen_json.write_text(json.dumps({**json.loads(gen_json.read_text()), key: value}))
        info = json.loads((bad / "bundle.json").read_text())
        info["generator"]["hash"] = generator_hash(bad / "generator")
        (bad / "bundle.json").write_text(json.dumps(info))
        resign(bad, keys["site_b"])
        with pytest.raises(BundleRejected, match=rf"\[schema\].*{where}"):
            verify_bundle(bad, keys["hub"], HUB)
