#!/usr/bin/env python3
"""Reference encodings for tokenizer components the two real files do not use.

Trains four tiny BPE tokenizers with Hugging Face `tokenizers` (byte-level with and without
the GPT-2 pre-split, SentencePiece-style with byte fallback, and one with a continuing-subword
prefix and end-of-word suffix), then derives variants from them: every Split behavior with and
without invert, ByteLevel with add_prefix_space/use_regex, Template and Sequence
post-processors, added tokens with lstrip, rstrip and normalized=true, unk with and without
fuse_unk, a Regex Replace normalizer, ignore_merges, Metaspace (pre-tokenizer and decoder,
every prepend scheme and the legacy add_prefix_space). For each variant it records, over a
small corpus, what `Tokenizer.from_str(...)` gives. Writes synthetic.json next to this script:

  {"corpus": [text...],
   "bases": {name: tokenizer.json object},
   "variants": [{"name", "base", "set": {top-level key: value}, "model": {model key: value},
                 "ids": [[...]...], "ids_special": [[...]...], "decode": [text...]}]}

A variant is its base with the "set" keys replaced and the "model" keys replaced inside
"model" (a null value sets null). Usage: python3 make_synthetic_golden.py (made with
tokenizers 0.23.3). The BPE trainer breaks ties in no fixed order, so a rerun may train
slightly different (equally valid) bases; the test reads whatever synthetic.json holds.
"""
import json
import os
import sys

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

CORPUS = [
    "",
    "   ",
    "Hello world",
    " Hello  world ",
    "a  b\t\tc\n\nd\r\ne",
    "I'm 123456 years old! Don't STOP, 'S.",
    "The quick brown fox, 42 times; 7x9=63?",
    "ab12cd345ef",
    "你好 世界",
    "😀 👨‍👩‍👧 🇫🇷",
    "café cafe\u0301 naïve",
    "<mask> x <mask>y",
    "word<mask>word",
    "[SEP]  after",
    "before   [SEP]   after",
    "say hello world and Hello World",
    "hello worldhello world",
    "<s>hi</s> <bos>x<eos>",
    "\x00\x01 tab\there",
    "unknown: ∑∫√ ☃ 𝔘𝔫",
    "a-b_c.d/e",
    "Привет, мир!",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Once upon a time there was a little fox.",
    "▁ Ġ Ċ",
]

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def training_text():
    lines = [json.loads(l)["text"] for l in open(os.path.join(HERE, "corpus.jsonl"), encoding="utf-8")]
    lines = [l for l in lines if len(l) < 200]
    stories = os.path.join(ROOT, "data", "tiny-stories.jsonl")
    lines += [json.loads(l)["text"] for l in open(stories, encoding="utf-8")]
    return lines


def train_bases(text):
    bases = {}
    # Byte-level (GPT-2 style).
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<bos>", "<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bases["bytelevel"] = json.loads(tok.to_str())

    # Byte-level without the pre-split: merges cross spaces and punctuation, so
    # how a Split pre-tokenizer cuts the text shows in the ids.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=420, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bases["bytelevel-raw"] = json.loads(tok.to_str())

    # SentencePiece style: Prepend + Replace, byte fallback, unk; legacy "a b" merges.
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=60,
        show_progress=False))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for b in range(256):  # byte tokens in the model vocabulary, as Llama 2's
        name = "<0x%02X>" % b
        if name not in vocab:
            vocab[name] = next_id
            next_id += 1
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    bases["sp"] = spec

    # Word-level splitting with a continuing-subword prefix and an end-of-word suffix.
    tok = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##",
                               end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], limit_alphabet=80, show_progress=False,
        continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    bases["suffix"] = json.loads(tok.to_str())
    return bases


def split(pattern, behavior, invert=False):
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


def byte_level(add_prefix_space, use_regex):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
            "use_regex": use_regex}


def template(*items, specials):
    single = []
    for item in items:
        if item == "$A":
            single.append({"Sequence": {"id": "A", "type_id": 0}})
        else:
            single.append({"SpecialToken": {"id": item, "type_id": 0}})
    return {"type": "TemplateProcessing", "single": single, "pair": single,
            "special_tokens": {k: {"id": k, "ids": [v], "tokens": [k]} for k, v in specials.items()}}


def added(id, content, special=False, lstrip=False, rstrip=False, normalized=False):
    return {"id": id, "content": content, "single_word": False, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def variants(bases):
    bl = bases["bytelevel"]
    n = len(bl["model"]["vocab"])
    bl_specials = {"<bos>": 0, "<eos>": 1}
    bl_added = bl["added_tokens"] + [
        added(n, "<mask>", lstrip=True),
        added(n + 1, "[SEP]", special=True, rstrip=True),
        added(n + 2, "hello world", normalized=True),
    ]
    bl_decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    out = [
        ("bytelevel-gpt2", "bytelevel", {
            "pre_tokenizer": byte_level(True, True), "added_tokens": bl_added,
            "post_processor": byte_level(True, False), "decoder": bl_decoder}, {}),
        ("bytelevel-noprefix-ignore-merges", "bytelevel", {
            "pre_tokenizer": byte_level(False, True), "decoder": bl_decoder,
            "post_processor": template("<bos>", "$A", "<eos>", specials=bl_specials)},
         {"ignore_merges": True}),
        ("bytelevel-llama3-regex", "bytelevel", {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split({"Regex": LLAMA3_REGEX}, "Isolated"), byte_level(False, False)]},
            "post_processor": {"type": "Sequence", "processors": [
                byte_level(True, False), template("<bos>", "$A", specials=bl_specials)]},
            "decoder": bl_decoder}, {}),
        ("split-string-merged-with-next", "bytelevel-raw", {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split({"String": " "}, "MergedWithNext"), byte_level(False, False)]},
            "decoder": bl_decoder}, {}),
    ]
    for behavior in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        for invert in [False, True]:
            out.append((f"split-{behavior.lower()}{'-invert' if invert else ''}", "bytelevel-raw", {
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    split({"Regex": r"\s+|[,.!?]+"}, behavior, invert), byte_level(False, False)]},
                "decoder": bl_decoder}, {}))

    sp = bases["sp"]
    sp_specials = {"<s>": 1, "</s>": 2}
    sp_decoder = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    sp_post = template("<s>", "$A", specials=sp_specials)
    out += [
        ("sp-byte-fallback", "sp", {"post_processor": sp_post, "decoder": sp_decoder}, {}),
        ("sp-unk-fused", "sp", {"post_processor": sp_post, "decoder": sp_decoder},
         {"byte_fallback": False, "fuse_unk": True}),
        ("sp-unk-unfused", "sp", {"post_processor": sp_post, "decoder": sp_decoder},
         {"byte_fallback": False, "fuse_unk": False}),
        ("sp-no-unk", "sp", {"post_processor": sp_post, "decoder": sp_decoder},
         {"byte_fallback": False, "unk_token": None}),
        ("sp-regex-replace", "sp", {
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": "▁"},
                {"type": "Prepend", "prepend": "▁"}]},
            "post_processor": template("<s>", "$A", "</s>", specials=sp_specials),
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 2, "stop": 1}]}}, {}),
        ("suffix-prefix", "suffix", {"decoder": None}, {}),
    ]

    def metaspace(scheme, split=None):
        spec = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme}
        if split is not None:
            spec["split"] = split
        return spec
    out += [
        ("metaspace-first", "sp", {
            "normalizer": None, "pre_tokenizer": metaspace("first", False),
            "post_processor": sp_post, "decoder": metaspace("first")}, {}),
        ("metaspace-always-split", "sp", {
            "normalizer": None, "pre_tokenizer": metaspace("always", True),
            "post_processor": sp_post,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "ByteFallback"}, metaspace("always")]}}, {}),
        ("metaspace-never", "sp", {
            "normalizer": None, "pre_tokenizer": metaspace("never", True),
            "decoder": metaspace("never")}, {}),
        ("metaspace-legacy-add-prefix-space", "sp", {
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True},
            "decoder": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}}, {}),
    ]
    return out


def main():
    bases = train_bases(training_text())
    records = []
    for name, base, top, model in variants(bases):
        spec = json.loads(json.dumps(bases[base]))
        spec.update(top)
        spec["model"].update(model)
        tok = Tokenizer.from_str(json.dumps(spec))
        ids = [tok.encode(t, add_special_tokens=False).ids for t in CORPUS]
        ids_special = [tok.encode(t, add_special_tokens=True).ids for t in CORPUS]
        decode = [tok.decode(i, skip_special_tokens=False) for i in ids_special]
        records.append({"name": name, "base": base, "set": top, "model": model,
                        "ids": ids, "ids_special": ids_special, "decode": decode})
    path = os.path.join(HERE, "synthetic.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"corpus": CORPUS, "bases": bases, "variants": records}, out,
                  ensure_ascii=False, separators=(",", ":"))
        out.write("\n")
    print(f"{len(records)} variants; synthetic.json: {os.path.getsize(path)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
