#!/usr/bin/env python3
"""Oracle test: hylo's tokenizer against HF `tokenizers` (pip), which is used here only as a reference.

    test_tokenizer_oracle.py TOK_DRIVER TOKENIZERS_DIR

For both real tokenizers (llama3, qwen3 under TOKENIZERS_DIR) every input must give identical ids (100%, no
tolerance), with special tokens parsed and (for a subset) treated as text, with and without the template;
decode must equal HF's decode (with and without special tokens) and round-trip the text (Qwen3: its NFC).
Inputs: fixed cases per language/script/edge, 10,000 seeded random Unicode strings, the whole KJV Bible (1
and 2-4 threads), plus: every code point's membership in the translated regex classes, hylo's NFC on every
code point and on random mark sequences, added-token flags (lstrip/rstrip/single_word/normalized) on a
modified Qwen3 file, and the chat templates rendered by jinja2 from tokenizer_config.json.
Exit 77 (skipped) when `tokenizers` or the tokenizer files are missing.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

try:
    from tokenizers import Tokenizer, normalizers, Regex, pre_tokenizers
except ImportError:
    print("SKIP: the python package `tokenizers` is not installed (scripts/setup.sh installs it)")
    sys.exit(77)

DRIVER = sys.argv[1]
TOKDIR = sys.argv[2]
NAMES = ["llama3", "qwen3"]
if not all(os.path.isfile(os.path.join(TOKDIR, n, "tokenizer.json")) for n in NAMES):
    print(f"SKIP: tokenizer files not found under {TOKDIR}")
    sys.exit(77)

failures = []
compared = 0


def fail(msg):
    failures.append(msg)
    if len(failures) <= 30:
        print("FAIL:", msg)


def driver(args, lines):
    inp = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode("utf-8")
    r = subprocess.run([DRIVER] + args, input=inp, capture_output=True)
    if r.returncode != 0:
        print(r.stderr.decode(errors="replace"))
        sys.exit(1)
    return [json.loads(l) for l in r.stdout.decode("utf-8").split("\n") if l]


# ---- inputs ----------------------------------------------------------------------------------------------
def fixed_cases():
    c = [
        "", " ", "a", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void.",
        "你好，世界！这是一个测试。机器学习和自然语言处理。", "我们的目标是长上下文推理。",
        "こんにちは世界。カタカナとひらがな、漢字。ｶﾀｶﾅ", "日本語の文章をトークン化します。",
        "안녕하세요, 세계! 한국어 텍스트입니다.", "\u1100\u1161\u11a8 \uac00\u11a8",
        "مرحبا بالعالم! هذا نص عربي. ١٢٣٤٥", "नमस्ते दुनिया! यह हिंदी पाठ है। १२३",
        "Привет, мир! Ёжик.", "Γειά σου Κόσμε", "שלום עולם", "ไทย ภาษา", "Tiếng Việt có dấu: ệ ừ ữ",
        "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇸🇯🇵 ❤️ 🧑🏿‍🚀 👩‍❤️‍💋‍👨", "a\u200db\u200cc\u2060d\ufeffe",
        "def f(x):\n    return x ** 2  # square\n\nclass A(object):\n\tpass\n",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\r\n",
        "for (int i = 0; i < n; ++i) {\n\t\ta[i] += b[i] * c;\n\t}",
        "SELECT * FROM t WHERE x >= 10 AND y != 'abc';", "<html><body class=\"x\">&amp;</body></html>",
        "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![]; Ok(()) }",
        "line1\r\nline2\r\n\r\nline3\rline4\n\r\n", "\r\n" * 7, "\r" * 5 + "x", "a\n\n\n\nb", "\n", "\t",
        "It's I'm you're we've they'll she'd IT'S I'M YOU'RE WE'VE THEY'LL SHE'D It'S i'M",
        "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'Re 'rE 'lL 'Ll", "don't DON'T Don'T",
        "it'\u017f it'\u017fs x'\u212a 'sa 'ss ''s", "rock 'n' roll '' ' '' '''",
        "A \u00a0B\u2009C\u3000D\u0085E\u2028F\u2029G\u1680H\u202fI\u205fJ\u000bK\u000cL",
        "x\u3000\u3000y  \u3000 z", "Ω≈ç√∫˜µ≤≥÷ ¡™£¢∞§¶•ªº–≠", "ⅠⅡⅢ ①②③ ½¾ ²³ ٠١٢ ߀߁",
        "e\u0301 a\u0301\u0323 o\u0308\u0304 \u1e9b\u0323 A\u030a \u212b \u2126 \u0344 \u0f73",
        "\u0915\u093c \u09c7\u09be \u0b47\u0b3e \u1025\u102e", "\u0061\u0315\u0300\u05ae\u0300b",
        "noncharacters \ufffe\uffff \U0010ffff \U000e0001 private \ue000\U000f0000",
        "\U0001d400\U0001d41a math \U0001f600 \U00020000\U0002a6d6 \U00030000",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>",
        "a<|eot_id|>b <|endoftext|> c<|im_end|><|im_end|><|im_start|>", "<|eot_id|<|eot_id|>|>",
        "<think>x</think> <tool_call>{}</tool_call> <|fim_prefix|>", "<|reserved_special_token_0|>z",
    ]
    for n in range(1, 41):
        c.append("7" * n)
        c.append("x" + "0123456789" * (n // 10) + "0123456789"[: n % 10] + "y")
    c.append(" ".join(str(10 ** k) for k in range(30)))
    c.append("3.14159 2,718 1e10 0x1F 1_000_000 12:30 2024-01-02 +44 (0)20")
    for ws in [" ", "\t", "\n", "\r\n", " \n", "\n ", "\t\n", "\u3000", "\u00a0"]:
        for n in [1, 2, 3, 5, 8, 16, 33]:
            c.append("a" + ws * n + "b")
            c.append(ws * n)
            c.append(ws * n + "x" + ws * n)
    c.append(" " * 100000 + "x")
    c.append("\n" * 50000)
    c.append((" \n" * 20000) + "end")
    c.append("\t" * 30000 + " " * 30000 + "\n" * 30000)
    c.append("ab" * 40000)  # one long pre-token: the heap BPE path
    c.append("".join(chr(0x4E00 + i) for i in range(2000)))
    c.append("=" * 5000 + "-" * 5000)
    return c


def random_strings(n, seed=1234):
    rng = random.Random(seed)
    pools = [
        (0x20, 0x7E, 30), (0x00, 0x1F, 2), (0x80, 0xFF, 6), (0x100, 0x24F, 4), (0x300, 0x36F, 5),
        (0x4E00, 0x9FFF, 8), (0x3040, 0x30FF, 4), (0xAC00, 0xD7A3, 5), (0x1100, 0x11FF, 2), (0x600, 0x6FF, 5),
        (0x900, 0x97F, 5), (0x1F300, 0x1FAFF, 5), (0x1F3FB, 0x1F3FF, 1), (0x1AB0, 0x1AFF, 1), (0x20D0, 0x20FF, 1),
        (0xFE00, 0xFE0F, 1), (0x2000, 0x206F, 2), (0x3000, 0x303F, 2), (0x1, 0x10FFFF, 8),
    ]
    specials = ["\r", "\n", "\t", " ", "  ", "\r\n", "\u3000", "\u200d", "'s", "'LL", "0", "123456", "<|im_end|>",
                "<|eot_id|>", "<think>", "\u0085", "\u00a0", "'"]
    weights = [p[2] for p in pools]
    out = []
    for _ in range(n):
        length = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
        s = []
        for _ in range(length):
            if rng.random() < 0.12:
                s.append(rng.choice(specials))
                continue
            lo, hi, _w = rng.choices(pools, weights)[0]
            cp = rng.randint(lo, hi)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0xFFFD
            s.append(chr(cp))
        out.append("".join(s))
    return out


def bible_text():
    path = shutil.which("bible")
    if path is None:
        return None
    r = subprocess.run([path, "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL, capture_output=True)
    if r.returncode != 0 or len(r.stdout) < 4_000_000:
        return None
    return r.stdout.decode("utf-8")


# ---- comparisons -----------------------------------------------------------------------------------------
def compare(name, hf, texts, parse_special=True, add_special_tokens=True, threads=1, label=""):
    global compared
    hf.encode_special_tokens = not parse_special
    nfc = normalizers.NFC() if name == "qwen3" else None
    req = [{"text": t, "parse_special": parse_special, "add_special_tokens": add_special_tokens, "threads": threads}
           for t in texts]
    got = driver(["encode", os.path.join(TOKDIR, name)], req)
    for t, g in zip(texts, got):
        want = hf.encode(t, add_special_tokens=add_special_tokens).ids
        compared += 1
        if g["ids"] != want:
            fail(f"{name}{label} ids differ for {t[:60]!r}: hylo {g['ids'][:20]} hf {want[:20]}")
            continue
        if g["decoded"] != hf.decode(want, skip_special_tokens=False):
            fail(f"{name}{label} decode differs for {t[:60]!r}")
        if g["decoded_skip"] != hf.decode(want, skip_special_tokens=True):
            fail(f"{name}{label} decode(skip_special) differs for {t[:60]!r}")
        # Round trip: the text itself (Qwen3: its NFC; HF normalizes between added tokens, so text holding
        # one is covered by the decode comparison above instead).
        if nfc and "<" in t:
            continue
        expect = nfc.normalize_str(t) if nfc else t
        if g["decoded"] != expect:
            fail(f"{name}{label} decode(encode(x)) != x for {t[:60]!r}")
    hf.encode_special_tokens = False


def check_classes():
    got = driver(["classes"], [])[0]
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for key, pat in [("L", r"\p{L}"), ("N", r"\p{N}"), ("s", r"\s")]:
        split = pre_tokenizers.Split(Regex(pat), "removed")
        want = set()
        for i in range(0, len(cps), 50000):
            chunk = cps[i:i + 50000]
            kept = set()
            for _, (a, b) in split.pre_tokenize_str("".join(map(chr, chunk))):
                kept.update(range(a, b))
            want.update(c for j, c in enumerate(chunk) if j not in kept)
        have = set()
        for a, b in got[key]:
            have.update(range(a, b + 1))
        if have != want:
            fail(f"regex class {key}: {len(have ^ want)} code points differ, e.g. "
                 f"{[hex(c) for c in sorted(have ^ want)[:8]]}")
    print(f"regex classes: \\p{{L}}, \\p{{N}}, \\s compared on all {len(cps)} code points")


def check_nfc():
    global compared
    nfc = normalizers.NFC()
    rng = random.Random(99)
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = ["".join(chr(c) for c in cps[i:i + 1]) for i in range(len(cps))]
    texts += ["a" + chr(c) + "\u0334" for c in range(0x300, 0x20000) if not 0xD800 <= c <= 0xDFFF]
    texts += ["a\u0301" + chr(c) for c in range(0x300, 0x20000) if not 0xD800 <= c <= 0xDFFF]
    marks = [c for c in range(0x300, 0x370)] + [0x1AB0 + i for i in range(0x4F)] + [0x0F71, 0x0F72, 0x0F80, 0x05B0,
             0x0591, 0x093C, 0x094D, 0x0E38, 0x0E48, 0x1161, 0x11A8, 0x3099, 0x309A, 0x0345, 0x0CD5, 0x0DCF, 0x0B3E]
    bases = ["a", "e", "o", "u", "A", "\u1100", "\uac00", "\u304b", "\u0915", "\u0b47", "\u0dd9", "\u3046", "\u017f"]
    for _ in range(20000):
        s = "".join(rng.choice(bases) + "".join(chr(rng.choice(marks)) for _ in range(rng.randint(0, 4)))
                    for _ in range(rng.randint(1, 4)))
        texts.append(s)
    got = driver(["nfc"], [{"text": t} for t in texts])
    bad = 0
    for t, g in zip(texts, got):
        compared += 1
        if g["nfc"] != nfc.normalize_str(t):
            bad += 1
            if bad <= 10:
                fail(f"NFC differs for {[hex(ord(x)) for x in t]}")
    if bad:
        fail(f"NFC: {bad} of {len(texts)} strings differ")
    print(f"NFC: {len(texts)} strings compared (every code point, two reorder probes per mark, random marks)")


def check_added_flags():
    """Added-token flags, which the real files do not use, on a modified Qwen3 file."""
    src = json.load(open(os.path.join(TOKDIR, "qwen3", "tokenizer.json"), encoding="utf-8"))
    flags = {"<think>": dict(lstrip=True), "</think>": dict(rstrip=True), "<tool_call>": dict(lstrip=True, rstrip=True),
             "</tool_call>": dict(single_word=True), "<tool_response>": dict(normalized=True),
             "<|im_start|>": dict(single_word=True, special=True)}
    for t in src["added_tokens"]:
        t.update(flags.get(t["content"], {}))
    src["added_tokens"].append({"id": 151669, "content": "e\u0301x", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": True, "special": False})
    d = tempfile.mkdtemp()
    try:
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(src, f, ensure_ascii=False)
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        texts = ["a  <think>  b", "<think>", "  <think>", "x</think>   y", "</think>\n\n z", "q \t<tool_call>\n r",
                 "word</tool_call>", "word </tool_call> x", "</tool_call>x", "_</tool_call>", "\u00e9</tool_call>",
                 "<tool_response>", "A\u030a<tool_response>", "\u00e9x and e\u0301x", "ab<|im_start|>cd",
                 "ab <|im_start|> cd", "<|im_start|>", " <think></think> <think> </think> ",
                 "  <think>  <think>  ", "\u3000<think>\u3000", "x<think>\u0085y"]
        global TOKDIR_FLAGS
        req = [{"text": t} for t in texts]
        got = driver(["encode", d], req)
        global compared
        for t, g in zip(texts, got):
            compared += 1
            want = hf.encode(t).ids
            if g["ids"] != want:
                fail(f"added-token flags: ids differ for {t!r}: hylo {g['ids']} hf {want}")
    finally:
        shutil.rmtree(d)
    print(f"added-token flags: {len(texts)} strings")


def check_chat():
    try:
        import jinja2
    except ImportError:
        print("chat templates: SKIPPED (jinja2 not installed)")
        return
    global compared
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x)
    convs = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  2+2?\n"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nanswer"},
         {"role": "user", "content": "again"}],
    ]
    for name in NAMES:
        cfg = json.load(open(os.path.join(TOKDIR, name, "tokenizer_config.json"), encoding="utf-8"))
        tmpl = env.from_string(cfg["chat_template"])
        req, want = [], []
        for conv in convs:
            for think in ([True, False] if name == "qwen3" else [True]):
                kw = {} if think else {"enable_thinking": False}
                want.append(tmpl.render(messages=conv, add_generation_prompt=True, bos_token=cfg.get("bos_token"),
                                        tools=None, **kw))
                req.append({"messages": conv, "add_generation_prompt": True, "enable_thinking": think})
        got = driver(["chat", os.path.join(TOKDIR, name)], req)
        for w, g, r in zip(want, got, req):
            compared += 1
            if g["text"] != w:
                fail(f"{name} chat template differs for {r}: hylo {g['text']!r} jinja2 {w!r}")
    print("chat templates: rendered with jinja2 from tokenizer_config.json and compared")


def check_bible(name, hf, text):
    global compared
    path = os.path.join(tempfile.mkdtemp(), "bible.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    want = hf.encode(text).ids
    for threads in [1, 2, 3, 4]:
        r = subprocess.run([DRIVER, "encode-file", os.path.join(TOKDIR, name), path, str(threads)], capture_output=True)
        if r.returncode != 0:
            fail(f"{name} bible: driver failed: {r.stderr.decode()}")
            continue
        got = [int(x) for x in r.stdout.split()]
        compared += 1
        if got != want:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            fail(f"{name} bible ({threads} threads): ids differ at token {i} ({len(got)} vs {len(want)} tokens)")
    print(f"{name}: the Bible ({len(text.encode())} bytes, {len(want)} tokens) identical with 1-4 threads")
    os.remove(path)


def main():
    cases = fixed_cases()
    rand = random_strings(10000)
    for name in NAMES:
        hf = Tokenizer.from_file(os.path.join(TOKDIR, name, "tokenizer.json"))
        compare(name, hf, cases)
        compare(name, hf, cases, parse_special=False, label=" (special as text)")
        compare(name, hf, cases[:40], add_special_tokens=False, label=" (no template)")
        compare(name, hf, rand, label=" (random)")
        compare(name, hf, rand[:2000], parse_special=False, label=" (random, special as text)")
        print(f"{name}: {len(cases)} fixed cases x2, 10000 random strings (+2000 with special tokens as text)")
        text = bible_text()
        if text is None:
            print(f"{name}: Bible SKIPPED (the `bible` program from bible-kjv is not installed)")
        else:
            check_bible(name, hf, text)
            big = (text[:600000] + "<|eot_id|><|im_end|>" + "\u00e9e\u0301\u3000  \n") * 2
            compare(name, hf, [big], threads=2, label=" (bible slices, 2 threads)")
    check_classes()
    check_nfc()
    check_added_flags()
    check_chat()
    print(f"{compared} comparisons, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
