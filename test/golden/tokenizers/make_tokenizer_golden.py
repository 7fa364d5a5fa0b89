#!/usr/bin/env python3
"""Reference encodings of Hugging Face `tokenizers` for llamac's Tokenizer tests.

Writes, next to this script:
  corpus.jsonl                {"text": ...} per line: the inputs
  expected-<name>.jsonl       per corpus line, from Tokenizer.from_file(<name>/tokenizer.json):
                                ids          encode(text, add_special_tokens=False).ids
                                ids_special  encode(text, add_special_tokens=True).ids
                                decode       decode(ids_special, skip_special_tokens=False)
                                decode_skip  decode(ids_special, skip_special_tokens=True)

Usage: pip install tokenizers && python3 make_tokenizer_golden.py
(made with tokenizers 0.23.3). The corpus is deterministic: rerunning gives the same files.
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZERS = ["llama-3", "sp-bpe-32k"]


def corpus():
    lines = [
        # Empty and whitespace only.
        "",
        " ",
        "  ",
        "     ",
        " " * 64,
        "\t",
        "\n",
        "\r\n",
        "\n\n\n",
        " \n \n ",
        "\t \t  \t\n",
        # English prose.
        "Hello world",
        "Hello, world!",
        " Hello world",
        "Hello world ",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times; it was the age of wisdom...",
        "Once upon a time, in a small village by the sea, there lived an old fisherman "
        "who talked to the gulls every morning before he pushed his boat into the water.",
        "I'm sure they'll say it's fine, but we've seen what'd happen if you'd DON'T.",
        "HE'S HERE. SHE'LL GO. WE'RE DONE. I'VE SEEN. I'M OK. THEY'D KNOW. 'T",
        "don’t use curly apostrophes’s",
        "a'ſ b'K 'ſ",
        "Mr. O'Neil's dog's bone",
        "e.g. i.e. etc. vs. U.S.A.",
        "   leading spaces",
        "trailing spaces    ",
        "multiple    inner     spaces",
        "line one\nline two\n\nline four\n",
        "windows\r\nline\r\nendings\r\n",
        "old mac\rline\r",
        "tabs\tbetween\twords\t\t",
        "!!!\n\n...\r\r\n???",
        "Hello!!! How are you??? ...",
        "email: someone@example.com, url: https://example.com/path?query=1&b=2#frag",
        "\"quoted\" 'single' `back` (paren) [bracket] {brace} <angle>",
        "~!@#$%^&*()_+-=[]{}|;:',.<>/?\\",
        # Code with tabs and indentation.
        "def f(x):\n    if x > 0:\n        return x * 2\n    return -x\n",
        "int main(void) {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n",
        "    \n        \n\t\n",
        "x=1;y=2;z=x+y",
        "if (a&&b||!c) { return a->b.c[0]; }",
        "<html><body><p class=\"x\">Hi</p></body></html>",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "#include <vector>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))",
        "    indented_by_four = [1, 2, 3]  # comment",
        # Digits and numbers.
        "0",
        "7",
        "42",
        "123",
        "1234",
        "12345",
        "123456",
        "1234567",
        "12345678901234567890",
        "3.14159265358979323846",
        "1,000,000 and 1.000.000 and 1 000 000",
        "-42 +7 1e10 6.02e23 0x1F 0b1010 0o777",
        "2024-11-28 12:34:56.789",
        "Call 555-0123 or +1 (555) 012-3456",
        "version 1.2.3-rc.4",
        "x² + y² = z², H₂O, ½ ¾, Ⅻ, ①②③",
        "１２３ fullwidth ＡＢＣ",
        "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९",
        "100% 50°C $3.50 €4,99 £10 ¥500 ₹100",
        # Non-Latin scripts.
        "你好，世界！今天天气很好。",
        "我爱自然语言处理和机器学习。",
        "日本語のテキストです。カタカナとひらがな。",
        "안녕하세요, 세계! 오늘은 좋은 날입니다.",
        "한국어 텍스트와 English mixed",
        "مرحبا بالعالم! كيف حالك اليوم؟",
        "שלום עולם",
        "नमस्ते दुनिया, यह एक परीक्षण है।",
        "สวัสดีชาวโลก",
        "Привет, мир! Как дела?",
        "Γειά σου Κόσμε",
        "Ελληνικά και русский и English",
        "Hello世界Привет مرحبا 안녕 こんにちは",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉",
        "𠀀𠀁𠀂 rare CJK extension B",
        "ᚠᛇᚻ᛫ᛒᛦᚦ runes",
        # Emoji.
        "😀",
        "I love pizza 🍕🍕🍕!",
        "👨‍👩‍👧‍👦 family",
        "👩🏽‍💻 coder, 🧑🏿‍🚀 astronaut",
        "🇺🇸🇯🇵🇩🇪🇫🇷 flags",
        "🏳️‍🌈 🏴‍☠️",
        "👍🏻👍🏼👍🏽👍🏾👍🏿",
        "1️⃣ 2️⃣ #️⃣ *️⃣",
        "❤️ vs ❤ and ☺︎ vs ☺️",
        # Combining marks and normalization forms.
        "café",
        "cafe\u0301",
        "Ame\u0301lie and Am\u00e9lie",
        "n\u0303 a\u0308 o\u0302\u0323",
        "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334a\u0308\u0307lgo",
        "ﬁ ﬂ ﬀ ligatures",
        # Control and invisible characters.
        "\x00",
        "a\x00b",
        "\x01\x02\x03\x04\x05\x06\x07\x08",
        "\x0b\x0c\x0e\x0f\x10\x1b[31mred\x1b[0m\x7f",
        "bell\x07 and escape\x1b",
        "next line\u0085here",
        "no\u00a0break\u00a0space",
        "line\u2028separator\u2029paragraph",
        "zero\u200bwidth\u200cnon\u200djoiner",
        "\ufeffbyte order mark",
        "ideographic\u3000space and em\u2003space and thin\u2009space",
        "soft\u00adhyphen",
        "right-to-left \u202eoverride\u202c done",
        # Special and added tokens inside text.
        "<|begin_of_text|>",
        "<|begin_of_text|>Hello<|end_of_text|>",
        "Hello <|eot_id|> world",
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
        "<|reserved_special_token_5|><|reserved_special_token_250|>",
        "<|begin_of_text|<|begin_of_text|>>",
        "<|begin_of_text",
        "</s>",
        "<s>",
        "<s>Hello</s>",
        "Hello</s>world",
        "Hello </s> world",
        "<unk> unknown <unk>",
        "<s<s>> </s</s>>",
        "<0x41> is not a byte here",
        "▁ underscore ▁▁ like",
        # Very long words and runs.
        "a" * 1000,
        "supercalifragilisticexpialidocious" * 20,
        "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "antidisestablishmentarianism " * 10,
        "ab" * 300 + "ba" * 300,
        "1" * 200,
        "!" * 150,
        "-" * 80 + "\n" + "=" * 80,
        "\n" * 40,
        " " * 300 + "x",
        "\t" * 50 + "y",
        "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQgZW5jb2RlZCBkYXRh" * 4,
        "https://example.com/" + "very-long-path-segment/" * 15 + "index.html",
        "字" * 120,
        "😀" * 60,
        # Mixed scripts.
        "The word 'naïve' in Japanese is 素朴 (soboku), and in Korean 순진한.",
        "Prices: 100円, 50元, 3000₩, 20€.",
        "αβγ123abc你好123",
        "CamelCaseIdentifier snake_case_identifier kebab-case-identifier",
        "ALLCAPS lowercase MiXeD",
    ]

    # Deterministic pseudo-random strings over tricky pools (a fuzz corpus).
    rng = random.Random(20261128)
    pools = [
        " ", "  ", "\t", "\n", "\r\n", "a", "Z", "é", "e\u0301", "ß", "ſ", "'", "'s", "'LL",
        "0", "12", "345", "6789", ".", ",", "!", "?", "-", "_", "/", "\\", "\"", "<", ">",
        "|", "你", "好", "한", "글", "ع", "ب", "ा", "क", "ー", "ア", "😀", "👨‍👩‍👧", "🇫🇷",
        "\u200d", "\u00a0", "\u3000", "\x00", "\x1b", "\x7f", "\u0085", "</s>", "<s>",
        "<|eot_id|>", "<|begin_of_text|>", "▁", "Ġ", "Ċ", "word", "Word", " the", " The",
        "ing", "tion", "\u2028",
    ]
    for _ in range(60):
        length = rng.randint(1, 40)
        lines.append("".join(rng.choice(pools) for _ in range(length)))
    # Random printable ASCII and random BMP/astral code points (no surrogates).
    for _ in range(15):
        lines.append("".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 80))))
    for _ in range(15):
        chars = []
        for _ in range(rng.randint(1, 30)):
            cp = rng.choice([rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xD7FF),
                             rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x10FFFF)])
            chars.append(chr(cp))
        lines.append("".join(chars))
    return lines


def main():
    lines = corpus()
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8") as out:
        for text in lines:
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    for name in TOKENIZERS:
        tok = Tokenizer.from_file(os.path.join(HERE, name, "tokenizer.json"))
        with open(os.path.join(HERE, f"expected-{name}.jsonl"), "w", encoding="utf-8") as out:
            for text in lines:
                ids = tok.encode(text, add_special_tokens=False).ids
                ids_special = tok.encode(text, add_special_tokens=True).ids
                row = {
                    "ids": ids,
                    "ids_special": ids_special,
                    "decode": tok.decode(ids_special, skip_special_tokens=False),
                    "decode_skip": tok.decode(ids_special, skip_special_tokens=True),
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    sizes = {f: os.path.getsize(os.path.join(HERE, f)) for f in
             ["corpus.jsonl"] + [f"expected-{n}.jsonl" for n in TOKENIZERS]}
    print(f"{len(lines)} lines;", ", ".join(f"{f}: {s} bytes" for f, s in sizes.items()),
          file=sys.stderr)


if __name__ == "__main__":
    main()
