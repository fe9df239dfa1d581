#!/usr/bin/env python3
"""Make a tiny Llama-architecture model for end-to-end tests with a real vLLM, offline.

The weights are random but deterministic from --seed; the tokenizer is a byte-level BPE trained
with the `tokenizers` library on e2e/testdata/tiny-corpus.txt; the chat template is a plain
Jinja one. Nothing is downloaded. The model says nothing useful: it exists so that a real vLLM
can load it, serve it and report its metrics in seconds on a CPU.

    python3 e2e/make-tiny-model.py OUT_DIR [--seed 1234]
"""
import argparse
import json
import os
import pathlib

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = pathlib.Path(__file__).resolve().parent
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def train_tokenizer(corpus: pathlib.Path, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    return tok


def weights(cfg: dict, rng: np.random.Generator) -> dict:
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    t = {"model.embed_tokens.weight": mat(vocab, h), "model.norm.weight": np.ones(h, np.float32),
         "lm_head.weight": mat(vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = mat(h, h)
        t[p + "self_attn.k_proj.weight"] = mat(kv, h)
        t[p + "self_attn.v_proj.weight"] = mat(kv, h)
        t[p + "self_attn.o_proj.weight"] = mat(h, h)
        t[p + "mlp.gate_proj.weight"] = mat(inter, h)
        t[p + "mlp.up_proj.weight"] = mat(inter, h)
        t[p + "mlp.down_proj.weight"] = mat(h, inter)
        t[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--corpus", default=str(HERE / "testdata" / "tiny-corpus.txt"))
    args = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer(pathlib.Path(args.corpus), args.vocab_size)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}

    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        # head_dim 64: vLLM's CPU attention kernels support 32, 64, 80, 96, 112, 128 and 256, not 16.
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "vocab_size": vocab, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float32", "bos_token_id": ids["<|bos|>"], "eos_token_id": [ids["<|eos|>"], ids["<|end|>"]],
        "pad_token_id": ids["<|pad|>"],
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"]}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg["max_position_embeddings"],
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}, indent=2) + "\n")
    save_file(weights(cfg, np.random.default_rng(args.seed)), str(out / "model.safetensors"), metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"tiny model in {out}: vocab {vocab}, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
