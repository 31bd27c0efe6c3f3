#!/usr/bin/env python3
"""Compare tb-tokenize with the HF `tokenizers` library on thousands of texts.

    python3 tests/py/tokenizer_compare.py [--bin build/bin] [--count 3000] [--seed 1234]

For each model tokenizer in tests/data (tiny-llama-6m: byte-level BPE,
tiny-mistral-10m: sentencepiece-style BPE with byte fallback) and for a set of
variants derived from them (Llama-3 and Qwen2 split regexes, ByteLevel with
add_prefix_space, Metaspace pre-tokenizer layouts, added tokens with lstrip /
rstrip / single_word / normalized), it generates snippets with a fixed seed:

  - real slices of ../shared/data/wikitext2-test.txt and calib.txt when that
    folder exists, else of the texts of tests/data/*/tokenizer-cases.json;
  - random strings mixing letters of many scripts, digits and other numbers,
    whitespace runs (\\t \\r \\n, Unicode spaces), emoji, punctuation,
    combining marks, contractions, special-token look-alikes, and code points
    drawn from the whole Unicode range;

encodes them all in one `tb-tokenize --jsonl` run per tokenizer, compares
with Tokenizer.encode(s, add_special_tokens=False).ids, then decodes the
reference ids with `tb-tokenize --jsonl --decode` and compares with
Tokenizer.decode(ids, skip_special_tokens=False).

Prints one line of counts per tokenizer and exits 1 on any mismatch, 77 if
the `tokenizers` package is missing (so a test runner can skip).
"""
import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile

try:
    from tokenizers import Tokenizer
except ImportError:
    print("tokenizer_compare: python package 'tokenizers' not installed; skipping")
    sys.exit(77)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("TB_TEST_DATA", os.path.join(REPO, "tests", "data"))
SHARED = os.environ.get("TB_SHARED", os.path.join(os.path.dirname(REPO), "shared"))

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# ---------------------------------------------------------------- snippets

def rng_chars(lo, hi):
    return [chr(c) for c in range(lo, hi + 1)]

POOLS = {
    "ascii": list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "digits": list("0123456789"),
    "latin1": list("àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿÀÉÎÕÜßĀłŒšžſ"),
    "greek": rng_chars(0x391, 0x3A9) + rng_chars(0x3B1, 0x3C9),
    "cyrillic": rng_chars(0x410, 0x44F) + ["\u1c89", "\u1c8a"],
    "arabic": rng_chars(0x627, 0x64A) + rng_chars(0x660, 0x669),
    "hebrew": rng_chars(0x5D0, 0x5EA),
    "devanagari": rng_chars(0x905, 0x939) + rng_chars(0x93E, 0x94D) + rng_chars(0x966, 0x96F),
    "thai": rng_chars(0xE01, 0xE2E) + rng_chars(0xE31, 0xE3A),
    "cjk": rng_chars(0x4E00, 0x4E80) + rng_chars(0x3041, 0x3096) + rng_chars(0x30A1, 0x30FA) + rng_chars(0xAC00, 0xAC40),
    "emoji": ["😀", "🚀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🤖", "🥲", "🫠", "✨", "☃", "⚡"],
    "combining": rng_chars(0x300, 0x36F) + ["\u093f", "\u0e49", "\u200d", "\u200c", "\ufe0f"],
    "ws": [" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0b", "\x0c", "\xa0", "\u1680", "\u2000",
           "\u2003", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\x85", "\x1c", "\x1f",
           "\u200b", "\ufeff", "\u180e", " \n ", "\t\t", "   \n"],
    "punct": list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'") + ["«", "»", "—", "–", "…", "“", "”", "‘", "’", "¿",
                                                          "¡", "§", "©", "®", "°", "€", "£", "¥", "•", "·"],
    "numbers": ["²", "³", "½", "¼", "Ⅻ", "ⅳ", "٣", "〇", "①", "𝟙", "१२", "๓", "𑽐", "𝋀"],
    "contractions": ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL",
                     "'d", "'D", "'ſ", "'ﬆ", "''", "'", "n't", "'x", "' s", "'r", "'l"],
    "special": ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<0x41>", "<0x0A>", "<0xZZ>",
                "<|", "|>", "<s", "s>", "▁", "▁▁", "Ġ", "Ċ", "\ufffd", "<tool>", "zzq", "word", "Word"],
    "nfc": ["e\u0301", "A\u030a", "\u212b", "\u2126", "\u1e9b\u0323", "\u0344", "\u0f73", "\u1100\u1161",
            "\u1100\u1161\u11a8", "\uac00\u11a8", "a\u0323\u0302", "a\u0302\u0323", "\u0958", "\U0001d15e",
            "\u1df6", "\U00011935\U00011930", "\u0b47\u0b3e", "\u09c7\u09be", "\u1161", "\u11a8", "\u0301",
            "o\u0308\u0304", "\u00f6\u0304", "\u1ea1\u0306", "\u0340", "\u0374", "\u037e", "\u0387"],
    "words": ["the", "The", "of", "and", "hello", "world", "café", "naïve", "résumé", "don", "won", "it",
              "HTTP", "camelCase", "snake_case", "x86", "3.14", "1,000", "10000000", "@-@", "@,@", "@.@"],
}
WEIGHTS = {"ascii": 6, "digits": 3, "latin1": 2, "greek": 1, "cyrillic": 1, "arabic": 1, "hebrew": 1,
           "devanagari": 1, "thai": 1, "cjk": 2, "emoji": 1, "combining": 1, "ws": 5, "punct": 3, "numbers": 1,
           "contractions": 2, "special": 1, "nfc": 2, "words": 4}
POOL_NAMES = list(WEIGHTS)
POOL_W = [WEIGHTS[k] for k in POOL_NAMES]


# Always included: strings aimed at single rules (contraction case folding,
# added-token flags, whitespace give-back, metaspace handling, digit groups).
CURATED = [
    "it'ſa", "IT'Sa", "'ſ", "x'ſ", "x'ﬆa", "'RE's", "we'VE", "I'LL", "'Ll'", "'lLx", "'Dx", "'tT", "'mM",
    " <tool> ", "a  <tool>  b", "\u3000<tool>\t", "<tool><tool>", " <tool>", "<tool> ", "x\n<tool>\ny",
    " \t<tool>", "word", "a word b", "aword", "wordy", "word.", "_word", "éword", "word\u0301", "\u24b6word",
    "1word", "word1", "zzq", " zzq", "azzq", "zzq zzq", "zzqzzq", "<s>", "<s><s>", " <s> ", "a<s>b",
    "<|begin_of_text|><|end_of_text|>x", "<|end_of_text|>x", "<0x41><0x42>", "<0xZZ>", "<unk>", "<0x0A>",
    "   ", "\n", "\r\n", "\r\n\r\n  x", " \n\n x", "\t\tx", "  \t x", "x  ", "x \n", "\xa0\xa0x",
    "\u3000x", " \u3000x", "\u2028x", "\x85x", "\x1cx", "x\u200bx", "x\r", "x\r\n", " \r \n ", "\n x",
    "123456789", "1234 56", "x1234", "²³", "Ⅻ2", "١٢٣٤", " 12", " ½x", "▁", "▁▁x", " ▁x", "▁ x", "x▁",
    "Ġx", "\ufffd", "😀😀", "a\u0300\u0301b", "\u0915\u094d\u0937", "(word)", "(x", "'", "''", "'''s",
    " 's", " 'x", "x's'", "\u1c89\u1c8a", "\U00011f04x", "\U00010940x", "\ue000", "\U0010fffd", " !!",
    "e\u0301", "cafe\u0301 na\u0131\u0308ve", "\u1100\u1161\u11a8\u1100\u1161", "a\u0302\u0323\u0301",
    "\u212b\u2126", "\U00011935\U00011930", "a\u1df6\u0323", "\u0344x", "\u0f73\u0f71\u0f72",
    "!!\n\n", " ?\r\n", "a\u00adb", "\u180ex", "x\ufeff", "  x  y  ", "\t\n\t", "...\n\n\n",
]


def any_codepoint(r):
    """A random code point of any plane in use (no surrogates, no NUL)."""
    while True:
        lim = r.choice([0x7F, 0x800, 0x3400, 0x10000, 0x20000, 0x32400, 0x110000])
        c = r.randrange(1, lim)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def random_snippet(r):
    parts = []
    for _ in range(r.randint(1, 40)):
        if r.random() < 0.06:
            parts.append(any_codepoint(r))
            continue
        pool = POOLS[r.choices(POOL_NAMES, POOL_W)[0]]
        item = r.choice(pool)
        parts.append(item * (r.randint(2, 6) if r.random() < 0.08 else 1))
    return "".join(parts)


def real_texts():
    texts = []
    for name in ("wikitext2-test.txt", "calib.txt"):
        p = os.path.join(SHARED, "data", name)
        if os.path.exists(p):
            with open(p, encoding="utf-8", newline="") as f:
                texts.append(f.read())
    if texts:
        return texts, "shared data"
    for m in sorted(os.listdir(DATA)):
        p = os.path.join(DATA, m, "tokenizer-cases.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                texts.append("".join(c["text"] for c in json.load(f)))
    return texts, "test cases"


def snippets(seed, count, texts):
    r = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 3
        if kind < 2 and texts:  # two thirds real slices, some long
            t = r.choice(texts)
            n = r.choice([1, 2, 5, 20, 80, 300, 1500])
            a = r.randrange(0, max(1, len(t) - n))
            out.append(t[a:a + r.randint(1, n)])
        else:
            out.append(random_snippet(r))
    for _ in range(3):  # a few long texts, where the word cache matters
        if texts:
            t = r.choice(texts)
            a = r.randrange(0, max(1, len(t) - 30000))
            out.append(t[a:a + 30000])
    return out + CURATED + [""]

# ---------------------------------------------------------------- variants

def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def variants(llama, mistral):
    """(name, tokenizer.json dict) pairs derived from the two models."""
    v = []
    t = copy.deepcopy(llama)  # Llama-3 layout
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    t["model"]["ignore_merges"] = True
    v.append(("llama3-split", t))
    t = copy.deepcopy(v[-1][1])
    t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_RE
    t["model"]["ignore_merges"] = False
    v.append(("qwen2-split", t))
    t = copy.deepcopy(v[-1][1])
    t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = GPT2_RE
    v.append(("gpt2-split", t))
    t = copy.deepcopy(v[1][1])  # Qwen2 layout: NFC normalizer + Qwen2 regex
    t["normalizer"] = {"type": "NFC"}
    v.append(("qwen2-nfc", t))
    t = copy.deepcopy(mistral)
    t["normalizer"]["normalizers"].insert(0, {"type": "NFC"})
    v.append(("mistral-nfc", t))
    t = copy.deepcopy(llama)
    t["pre_tokenizer"]["add_prefix_space"] = True
    t["model"]["merges"] = [" ".join(m) for m in t["model"]["merges"]]  # "a b" merge strings
    v.append(("bytelevel-prefix", t))
    for scheme in ("first", "always", "never"):
        for split in (False, True):
            t = copy.deepcopy(mistral)
            t["normalizer"] = None
            t["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,
                                  "split": split}
            if scheme == "always" and split:
                t["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,
                                "split": split}
            v.append((f"metaspace-{scheme}-{'split' if split else 'nosplit'}", t))
    # added tokens with the flags that change matching
    for base_name, base in (("llama", llama), ("mistral", mistral)):
        t = copy.deepcopy(base)
        nid = len(t["model"]["vocab"])
        extra = [
            {"content": "<tool>", "lstrip": True, "rstrip": True, "normalized": False, "special": False},
            {"content": "zzq", "lstrip": False, "rstrip": False, "normalized": True, "special": False},
            {"content": "word", "single_word": True, "normalized": False, "special": False},
            {"content": "<|end_of_text|>x", "normalized": False, "special": True},
        ]
        for k, e in enumerate(extra):
            full = {"id": nid + k, "single_word": False, "lstrip": False, "rstrip": False}
            full.update(e)
            t["added_tokens"].append(full)
        v.append((f"{base_name}-added-flags", t))
    t = copy.deepcopy(mistral)  # no byte fallback: unknown characters become <unk>, fused
    t["model"]["byte_fallback"] = False
    v.append(("mistral-unk-fused", t))
    t = copy.deepcopy(v[-1][1])
    t["model"]["fuse_unk"] = False
    v.append(("mistral-unk-unfused", t))
    return v

# ---------------------------------------------------------------- running

def run_tb(binary, tok_path, lines, decode=False):
    args = [binary, "-m", tok_path, "--jsonl", "--quiet"] + (["--decode"] if decode else [])
    p = subprocess.run(args, input="".join(lines).encode("utf-8"), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise SystemExit(f"tb-tokenize failed ({p.returncode}): {p.stderr.decode(errors='replace').strip()}")
    # split on \n only: str.splitlines() would also cut at U+2028, \x85, \x1c...
    return [json.loads(l) for l in p.stdout.decode("utf-8").split("\n")[:-1]]


def compare(name, binary, tok_path, snips, show=3):
    ref = Tokenizer.from_file(tok_path)
    want = [e.ids for e in ref.encode_batch(snips, add_special_tokens=False)]
    got = run_tb(binary, tok_path, [json.dumps(s, ensure_ascii=False) + "\n" for s in snips])
    enc_bad = [i for i in range(len(snips)) if got[i] != want[i]]
    want_txt = ref.decode_batch(want, skip_special_tokens=False)
    got_txt = run_tb(binary, tok_path, [json.dumps(ids) + "\n" for ids in want], decode=True)
    dec_bad = [i for i in range(len(snips)) if got_txt[i] != want_txt[i]]
    for i in enc_bad[:show]:
        print(f"  ENCODE MISMATCH {name}: {snips[i]!r}\n    tb:  {got[i]}\n    ref: {want[i]}")
    for i in dec_bad[:show]:
        print(f"  DECODE MISMATCH {name}: ids {want[i][:20]}\n    tb:  {got_txt[i]!r}\n    ref: {want_txt[i]!r}")
    ntok = sum(len(w) for w in want)
    print(f"{name:28s} {len(snips):6d} snippets {ntok:8d} tokens  "
          f"encode mismatches {len(enc_bad)}  decode mismatches {len(dec_bad)}")
    return len(snips), len(enc_bad) + len(dec_bad)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("TB_BIN", os.path.join(REPO, "build", "bin")))
    ap.add_argument("--count", type=int, default=3000, help="snippets per model (variants get a fifth)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-variants", action="store_true")
    a = ap.parse_args()
    binary = os.path.join(a.bin, "tb-tokenize")
    texts, source = real_texts()
    print(f"snippet source: {source}; seed {a.seed}")
    total = bad = 0
    paths = {m: os.path.join(DATA, m, "tokenizer.json") for m in ("tiny-llama-6m", "tiny-mistral-10m")}
    for k, (m, p) in enumerate(paths.items()):
        n, b = compare(m, binary, p, snippets(a.seed + k, a.count, texts))
        total, bad = total + n, bad + b
    if not a.no_variants:
        with tempfile.TemporaryDirectory() as tmp:
            vs = variants(load_json(paths["tiny-llama-6m"]), load_json(paths["tiny-mistral-10m"]))
            for k, (name, tj) in enumerate(vs):
                p = os.path.join(tmp, name + ".json")
                with open(p, "w", encoding="utf-8") as f:
                    json.dump(tj, f, ensure_ascii=False)
                n, b = compare(name, binary, p, snippets(a.seed + 100 + k, max(1, a.count // 5), texts))
                total, bad = total + n, bad + b
    print(f"total: {total} snippets, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
