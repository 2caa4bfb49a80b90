#!/usr/bin/env python3
"""Write tests/data/t5/tiny_256/: a one-layer random T5 encoder with d_model 256
(the text width of the tiny Infinity golden model), reusing the test
SentencePiece model, so that the CLI can run text-to-image end to end on the
golden weights. Run with a python that has torch + transformers (<4.40 for
Debian's torch 1.13)."""
import os
import shutil

import torch
from transformers import T5Config, T5EncoderModel

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "tests", "data", "t5")


def main():
    out = os.path.join(DATA, "tiny_256")
    torch.manual_seed(256)
    cfg = T5Config(vocab_size=500, d_model=256, d_kv=32, num_heads=8, d_ff=128, num_layers=1,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = T5EncoderModel(cfg).eval()
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(os.path.join(DATA, "tiny_gated", "spiece.model"), os.path.join(out, "spiece.model"))
    print("wrote", out)


if __name__ == "__main__":
    main()
