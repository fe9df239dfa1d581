#!/usr/bin/env python3
"""Make a LoRA adapter for the tiny model of make-tiny-model.py, offline, for the real-vLLM tests.

It reads the model's config.json and writes what PEFT writes: adapter_config.json and
adapter_model.safetensors with lora_A and lora_B for q_proj and v_proj of every layer, in the
shapes vLLM checks. The weights are random but deterministic from --seed, and large enough that
the adapter changes what the model says: a test can tell that the adapter served the request.

    python3 e2e/make-tiny-lora.py MODEL_DIR OUT_DIR [--rank 8] [--seed 7]
"""
import argparse
import json
import pathlib

import numpy as np
from safetensors.numpy import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    cfg = json.loads((pathlib.Path(args.model) / "config.json").read_text())
    h = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    outs = {"q_proj": cfg["num_attention_heads"] * head_dim, "v_proj": cfg["num_key_value_heads"] * head_dim}
    rng = np.random.default_rng(args.seed)
    r = args.rank
    tensors = {}
    for i in range(cfg["num_hidden_layers"]):
        for mod, out_dim in outs.items():
            p = f"base_model.model.model.layers.{i}.self_attn.{mod}."
            tensors[p + "lora_A.weight"] = (rng.standard_normal((r, h)) * 0.5).astype(np.float32)
            tensors[p + "lora_B.weight"] = (rng.standard_normal((out_dim, r)) * 0.5).astype(np.float32)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(pathlib.Path(args.model).resolve()),
        "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "target_modules": sorted(outs), "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "inference_mode": True,
    }, indent=2) + "\n")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    print(f"tiny LoRA adapter in {out}: rank {r}, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
