"""DINOv2 training-step throughput: the engine (auto precision and compile) vs a plain eager fp32 loop of the model.

At 64 px / patch 8 the model is the dinov2_vit_tiny_demo recipe (2 local crops of 32 px, 256 prototypes); at
224 px / patch 16 it is the DINOv2 defaults on a ViT-Ti (8 local crops of 96 px, head 2048/384/65536, iBOT block
masking), the paper's crops and head on a tiny encoder. Student and EMA teacher, multi-crop per sample in the
data path. Prints one JSON document like bench_mae.py; see step_bench.py for the method.
Usage: python benchmarks/bench_dino.py [--cases 64px_p8 224px_p16] [--steps 3] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_bench import main
from synthfm.pretrain.dino import DINO_RECIPES

BASE = DINO_RECIPES["dinov2_vit_tiny_demo"]
PER_CASE = {"224px_p16": {"dinov2": {"local_size": 96}}}  # DINOv2 defaults: 8 local crops, 65536 prototypes

if __name__ == "__main__":
    print(json.dumps(main("dinov2", BASE, __doc__, {"64px_p8": 8, "224px_p16": 2}, PER_CASE), indent=1))
