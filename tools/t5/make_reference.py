#!/usr/bin/env python3
"""Reference data for the C++ T5 encoder and tokenizer (tests/test_t5.cpp).

Writes, under tests/data/t5/:
  tiny_gated/   config.json, model.safetensors, spiece.model  (T5EncoderModel, gated-gelu)
  tiny_relu/    config.json, pytorch_model.bin, spiece.model  (T5ForConditionalGeneration,
                relu, 1 decoder layer, so the loader must skip decoder.* / lm_head)
  reference.safetensors  per prompt i: ids_i (I32, HF tokenizer with EOS), gated_i and relu_i
                (F32 [n, d_model] encoder last_hidden_state); ids_trunc (prompt 2 truncated to
                32 tokens incl. EOS); metadata prompt_i = the UTF-8 text.

The SentencePiece model is a tiny unigram model trained on the Debian license texts, with
T5's special ids (pad 0, eos 1, unk 2, no bos) and the default nmt_nfkc normaliser.

  python3 -m venv --system-site-packages /tmp/t5venv   # Debian python3: torch 1.13
  /tmp/t5venv/bin/pip install 'transformers<4.40' sentencepiece safetensors protobuf
  /tmp/t5venv/bin/python tools/t5/make_reference.py
"""
import glob
import os
import shutil
import tempfile

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import (T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Tokenizer,
                          T5TokenizerFast)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "t5")
SPM_VOCAB = 400
EXTRA_IDS = 100

PROMPTS = [
    "a cat",
    "A photo of an astronaut riding a horse on the moon, highly detailed, 8k.",
    # Long (> 128 tokens with this tiny vocabulary) so that the far relative buckets
    # (|j - i| >= 91 -> 15) and truncation are exercised.
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this "
    "software and associated documentation files, to deal in the Software without restriction, "
    "including without limitation the rights to use, copy, modify, merge, publish, distribute, "
    "sublicense, and/or sell copies of the Software, and to permit persons to whom the Software "
    "is furnished to do so, subject to the following conditions: a watercolor painting of a "
    "lighthouse at dusk, seagulls circling above crashing waves, warm orange light.",
    # Unicode, full-width characters (NFKC folds them), accents, emoji, punctuation runs.
    "Café « naïve » — ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ ①②, 日本語, emoji 🚀!?... (x=1; y<2) #tag",
]


def train_spm(tmp):
    text = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="ignore") as f:
                text.append(f.read())
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    prefix = os.path.join(tmp, "spiece")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=SPM_VOCAB, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        input_sentence_size=200000, shuffle_input_sentence=False, num_threads=2,
        minloglevel=2)
    return prefix + ".model"


def make_config(ffp, vocab):
    return T5Config(vocab_size=vocab, d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2,
                    num_decoder_layers=1, feed_forward_proj=ffp, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                    dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                    tie_word_embeddings=(ffp == "relu"))


def randomize(model, seed):
    """HF init plus larger layer-norm weights and relative biases, so that every term of the
    math (norm gains, position buckets) visibly affects the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(2.0 * torch.randn_like(p))


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = train_spm(tmp)
        sp = spm.SentencePieceProcessor(model_file=spm_path)
        assert sp.get_piece_size() == SPM_VOCAB
        vocab = SPM_VOCAB + EXTRA_IDS

        ref, meta = {}, {}
        tok_dir = os.path.join(tmp, "tok")
        os.makedirs(tok_dir)
        shutil.copy(spm_path, os.path.join(tok_dir, "spiece.model"))
        slow = T5Tokenizer(os.path.join(tok_dir, "spiece.model"), extra_ids=EXTRA_IDS, legacy=True)
        slow.save_pretrained(tok_dir)
        fast = T5TokenizerFast.from_pretrained(tok_dir, legacy=True)

        models = {}
        for variant, ffp, seed in (("gated", "gated-gelu", 1234), ("relu", "relu", 5678)):
            torch.manual_seed(seed)
            cfg = make_config(ffp, vocab)
            model = (T5EncoderModel(cfg) if variant == "gated"
                     else T5ForConditionalGeneration(cfg))
            randomize(model, seed + 1)
            model.eval()
            d = os.path.join(OUT, "tiny_" + variant)
            shutil.rmtree(d, ignore_errors=True)
            model.save_pretrained(d, safe_serialization=(variant == "gated"))
            shutil.copy(spm_path, os.path.join(d, "spiece.model"))
            models[variant] = model.encoder if variant == "relu" else model

        for i, text in enumerate(PROMPTS):
            ids = fast(text).input_ids  # what Infinity uses (T5TokenizerFast, legacy=True)
            ids_slow = slow(text).input_ids
            ids_spm = sp.encode(text) + [1]
            assert ids == ids_slow == ids_spm, (i, ids, ids_slow, ids_spm)
            meta["prompt_%d" % i] = text
            ref["ids_%d" % i] = torch.tensor(ids, dtype=torch.int32)
            with torch.no_grad():
                x = torch.tensor([ids], dtype=torch.long)
                for variant, m in models.items():
                    h = m(input_ids=x).last_hidden_state[0].float().contiguous()
                    ref["%s_%d" % (variant, i)] = h
            print("prompt %d: %d tokens" % (i, len(ids)))
        trunc = fast(PROMPTS[2], max_length=32, truncation=True).input_ids
        assert len(trunc) == 32 and trunc[-1] == 1
        ref["ids_trunc"] = torch.tensor(trunc, dtype=torch.int32)
        save_file(ref, os.path.join(OUT, "reference.safetensors"), metadata=meta)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
