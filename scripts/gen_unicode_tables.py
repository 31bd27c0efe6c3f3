#!/usr/bin/env python3
"""Emit formats/tb_unicode_tables.h: the Unicode classes the tokenizer's
pre-tokenizer splitters need, as compact range tables.

    python3 scripts/gen_unicode_tables.py > formats/tb_unicode_tables.h

Why a generated table: the HF `tokenizers` library splits text with regexes
run by Oniguruma, whose \\p{L}, \\p{N} and \\s follow the Unicode version
Oniguruma was built with. To give the same ids we must classify every code
point the same way, so the data has to come from the same Unicode version.
tokenizers 0.23 (Oniguruma 6.9.10) uses Unicode 16.0: U+1C89 (new in 16.0)
is a letter to it, U+10940 (new in 17.0) is not. Python's own unicodedata is
often older (3.11 has 14.0), so the `unicodedata2` backport pinned to the
right version is preferred:  pip install unicodedata2==16.0.0

Classes (bit flags):
  L  general category L* (Lu Ll Lt Lm Lo)                    regex \\p{L}
  N  general category N* (Nd Nl No)                          regex \\p{N}
  S  Oniguruma's Unicode \\s: U+0009-000D, U+0085 and the
     categories Zs, Zl, Zp (equal to the White_Space property)
  W  Rust regex's Unicode \\w (used only for added tokens with single_word):
     Alphabetic, M*, Nd, Pc, Join_Control. Alphabetic is not in unicodedata;
     it is L* + Nl + Other_Alphabetic, and Other_Alphabetic outside M* is
     only the circled/squared Latin letters listed below.

NFC data (the NFC normalizer, used by Qwen2's tokenizer.json): tokenizers does
NFC with the unicode-normalization-alignments crate, whose data is Unicode
9.0 (it does not reorder U+1DF6, a mark of 10.0, nor compose U+11935 U+11930
of 13.0). Normalization data of an assigned character never changes, so the
9.0 tables are the current ones restricted to characters assigned by 9.0; the
age of each character comes from perl's Unicode::UCD (Debian's perl-modules).
Emitted: canonical combining classes, one-step canonical decompositions,
primary composites, and the characters that may change under NFC (the quick
check: text without them is already NFC).
"""
import subprocess
import sys

try:
    import unicodedata2 as ud
except ImportError:  # pragma: no cover - fallback with a loud warning
    import unicodedata as ud

WANT = "16.0.0"
if ud.unidata_version != WANT:
    sys.stderr.write(f"warning: Unicode {ud.unidata_version}, tokenizers uses {WANT}: "
                     f"pip install unicodedata2=={WANT}\n")

F_L, F_N, F_S, F_W = 1, 2, 4, 8

# Other_Alphabetic code points that are not marks (PropList.txt): circled and
# squared Latin letters. They are \w to Rust's regex although their category is So.
OTHER_ALPHA_SO = [(0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189)]


def flags(cp):
    c = chr(cp)
    cat = ud.category(c)
    f = 0
    if cat[0] == "L":
        f |= F_L | F_W
    if cat[0] == "N":
        f |= F_N
    if cat in ("Nd", "Nl") or cat[0] == "M" or cat == "Pc" or cp in (0x200C, 0x200D):
        f |= F_W
    if 0x09 <= cp <= 0x0D or cp == 0x85 or cat in ("Zs", "Zl", "Zp"):
        f |= F_S
    for lo, hi in OTHER_ALPHA_SO:
        if lo <= cp <= hi:
            f |= F_W
    return f


NFC_AGE = (9, 0)


def ages(cps):
    """Unicode age (major, minor) of each code point, None if unassigned."""
    script = 'use Unicode::UCD qw(charprop); while (<STDIN>) { chomp; print charprop(hex($_), "Age"), "\\n" }'
    out = subprocess.run(["perl", "-e", script], input="".join("%X\n" % c for c in cps), capture_output=True,
                         text=True, check=True).stdout.split()
    res = {}
    for c, a in zip(cps, out):
        res[c] = tuple(int(x) for x in a[1:].split("_")) if a.startswith("V") else None
    return res


def nfc_tables():
    canon = {}
    for cp in range(0x110000):
        d = ud.decomposition(chr(cp))
        if d and not d.startswith("<"):
            canon[cp] = [int(x, 16) for x in d.split()]
    relevant = set(canon) | {c for v in canon.values() for c in v}
    relevant |= {cp for cp in range(0x110000) if ud.combining(chr(cp))}
    age = ages(sorted(relevant))
    old = {c for c in relevant if age[c] is not None and age[c] <= NFC_AGE}
    ccc = [(cp, ud.combining(chr(cp))) for cp in sorted(old) if ud.combining(chr(cp))]
    decomp = [(cp, v[0], v[1] if len(v) > 1 else 0) for cp, v in sorted(canon.items()) if cp in old]
    comp = []
    for cp, a, b in decomp:
        if b and ud.normalize("NFC", chr(a) + chr(b)) == chr(cp):
            comp.append((a, b, cp))
    comp.sort()
    unsafe = {cp for cp, _ in ccc} | {b for _, b, _ in comp}
    unsafe |= {cp for cp, _, _ in decomp if ud.normalize("NFC", chr(cp)) != chr(cp)}
    # Hangul vowel and trailing jamo compose algorithmically (not in `comp`)
    unsafe |= set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    return ccc, decomp, comp, sorted(unsafe)


def ranges_of(items):
    """[(cp, value)] sorted -> [[lo, hi, value]] merging runs"""
    r = []
    for cp, v in items:
        if r and r[-1][1] == cp - 1 and r[-1][2] == v:
            r[-1][1] = cp
        else:
            r.append([cp, cp, v])
    return r


def emit_table(out, ctype, name, rows, fmt):
    out.write(f"#define {name.upper()}_N {len(rows)}\n")
    out.write(f"static const {ctype} {name}[{name.upper()}_N] = {{\n")
    for i in range(0, len(rows), 4):
        out.write("    " + " ".join(fmt % tuple(r) for r in rows[i:i + 4]) + "\n")
    out.write("};\n\n")


def main():
    ranges = []  # [lo, hi, flags] for cp >= 0x80, flags != 0
    for cp in range(0x80, 0x110000):
        f = flags(cp)
        if f == 0:
            continue
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == f:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, f])
    out = sys.stdout
    out.write("/* tb_unicode_tables.h - GENERATED by scripts/gen_unicode_tables.py from\n")
    out.write(f" * Unicode {ud.unidata_version}; do not edit. See the script for what the classes mean. */\n")
    out.write("#ifndef TB_UNICODE_TABLES_H\n#define TB_UNICODE_TABLES_H\n\n#include <stdint.h>\n\n")
    out.write(f'#define TB_UNICODE_VERSION "{ud.unidata_version}"\n')
    out.write("#define TB_UC_L 1u /* \\p{L} */\n#define TB_UC_N 2u /* \\p{N} */\n")
    out.write("#define TB_UC_S 4u /* \\s */\n#define TB_UC_W 8u /* \\w */\n\n")
    out.write("static const uint8_t tb_uc_ascii[128] = {\n")
    row = [str(flags(cp)) for cp in range(128)]
    for i in range(0, 128, 16):
        out.write("    " + ", ".join(row[i:i + 16]) + ",\n")
    out.write("};\n\n")
    out.write("/* Sorted, disjoint ranges of code points >= 0x80 sharing the same flags;\n")
    out.write(" * a code point in no range has no class. */\n")
    out.write("typedef struct { uint32_t lo, hi, flags; } tb_uc_range;\n")
    out.write(f"#define TB_UC_NRANGES {len(ranges)}\n")
    out.write("static const tb_uc_range tb_uc_ranges[TB_UC_NRANGES] = {\n")
    for i in range(0, len(ranges), 4):
        chunk = ranges[i:i + 4]
        out.write("    " + " ".join("{0x%X, 0x%X, %d}," % (lo, hi, f) for lo, hi, f in chunk) + "\n")
    out.write("};\n\n")

    ccc, decomp, comp, unsafe = nfc_tables()
    out.write("/* ---- NFC, with Unicode %d.%d data (see the script) ---- */\n" % NFC_AGE)
    out.write('#define TB_NFC_UNICODE_VERSION "%d.%d.0"\n' % NFC_AGE)
    out.write("typedef struct { uint32_t cp, a, b; } tb_nfc_map;\n")
    out.write("/* canonical combining class != 0, as {lo, hi, class} */\n")
    emit_table(out, "tb_uc_range", "tb_ccc_ranges", ranges_of(ccc), "{0x%X, 0x%X, %d},")
    out.write("/* one step of canonical decomposition {cp, first, second or 0}, by cp */\n")
    emit_table(out, "tb_nfc_map", "tb_nfc_decomp", decomp, "{0x%X, 0x%X, 0x%X},")
    out.write("/* primary composites as {first, second, composite}, by (first, second) */\n")
    emit_table(out, "tb_nfc_map", "tb_nfc_comp", comp, "{0x%X, 0x%X, 0x%X},")
    out.write("/* characters that may change under NFC (quick check No/Maybe, or a mark) */\n")
    emit_table(out, "tb_uc_range", "tb_nfc_unsafe", ranges_of([(c, 0) for c in unsafe]), "{0x%X, 0x%X, %d},")
    out.write("#endif\n")


if __name__ == "__main__":
    main()
