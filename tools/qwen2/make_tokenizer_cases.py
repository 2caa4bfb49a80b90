#!/usr/bin/env python3
"""Test cases for fastvar.cpp's Qwen2 tokenizer (tests/test_qwen2_tokenizer.cpp), made by the Hugging Face
`tokenizers` library (pip install tokenizers) from the golden folder's tokenizer.json (Qwen2's pipeline:
added tokens, NFC, the Split regex, ByteLevel, BPE).

Writes into tests/data/qwen2/: tokenizer.json (a copy, merges as "a b" strings), tokenizer_pairs.json (the
same with merges as ["a", "b"] pairs, the tokenizers >= 0.20 form; checked to give the same ids), and
tokenizer_cases.json ([{"text", "ids"}]).

  python tools/qwen2/make_tokenizer_cases.py
"""
import json
import os

from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SRC = os.path.join(ROOT, "tests", "data", "golden", "qwen2_tiny_a", "qwen2", "tokenizer.json")
OUT = os.path.join(ROOT, "tests", "data", "qwen2")

CASES = [
    "",
    "a red fox in the snow",
    "A  red   fox\t\tin the\nsnow",
    "line one\r\nline two\r\n\r\nend",
    "   leading and trailing spaces   ",
    "tabs\tand\u000bvertical\u000cfeeds\u0085next",
    "I'm sure it's what you've said we'll do, they'd THEY'RE IT'S",
    "digits 1234567890 and 3.14159, 2024-12-07",
    "東京の夜景、美しい猫と犬",
    "한국어 문장과 中文句子",
    "emoji \U0001F98A\U0001F525 and flags \U0001F1EF\U0001F1F5 and ZWJ \U0001F469\u200D\U0001F4BB",
    "cafe\u0301 vs caf\u00e9, Ame\u0301lie, n\u0303",
    "Ångström, naïve, façade, Œuvre, straße",
    "special <|endoftext|> inside <|im_start|>user<|im_end|> text",
    "<|endoftext|><|endoftext|>",
    "almost special <|endoftext| and <|im_start",
    "punctuation!!! ??? ... --- *** ### @@@ $$$ %%%",
    "mixed123abc ABC123 a1b2c3",
    "newlines\n\n\nat the end\n",
    "non-breaking\u00a0space and thin\u2009space and ideographic\u3000space",
    "math ∑∫√∞ ≤≥ and arrows → ← ↔",
    "Привет мир, Ελληνικά, עברית, العربية",
    "x" * 300,
    "a very long prompt " * 40,
]


def main():
    tok = Tokenizer.from_file(SRC)
    os.makedirs(OUT, exist_ok=True)
    with open(SRC, encoding="utf-8") as f:
        spec = json.load(f)
    with open(os.path.join(OUT, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    pairs = json.loads(json.dumps(spec))
    pairs["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    pairs_path = os.path.join(OUT, "tokenizer_pairs.json")
    with open(pairs_path, "w", encoding="utf-8") as f:
        json.dump(pairs, f, ensure_ascii=False)
    tok_pairs = Tokenizer.from_file(pairs_path)
    cases = []
    for text in CASES:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok_pairs.encode(text, add_special_tokens=False).ids == ids, text
        cases.append({"text": text, "ids": ids})
    with open(os.path.join(OUT, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
