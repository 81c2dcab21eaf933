"""MAE training-step throughput: the engine (auto precision and compile) vs a plain eager fp32 loop of the recipe model.

The model is the MAE recipe's (mae_vit_base: the paper's 8-block, 512-wide, 16-head decoder, mask 0.75,
normalised-pixel loss) on a ViT-Ti encoder at 64 px / patch 8 and 224 px / patch 16. Prints one JSON document
with images/s, achieved FLOP/s as fractions of the measured fp32 and bf16 matmul peaks, the engine's phase split
(data, forward, backward, optimiser), and the goals of this machine's case; see step_bench.py for the method.
Usage: python benchmarks/bench_mae.py [--cases 64px_p8 224px_p16] [--steps 3] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_bench import main
from synthfm.pretrain.mae import MAE_RECIPES

BASE = {**MAE_RECIPES["mae_vit_base"], "backbone": "vit_tiny_p8_64"}

if __name__ == "__main__":
    print(json.dumps(main("mae", BASE, __doc__, {"64px_p8": 8, "224px_p16": 2}), indent=1))
