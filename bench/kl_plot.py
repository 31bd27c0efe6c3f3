#!/usr/bin/env python3
"""KL(dense || pruned) against sparsity, one line per recipe, as an SVG.

usage: bench/kl_plot.py QUALITY_TXT OUT_SVG [MODEL [WINDOWS]]

Reads the lines bench/quality.sh appends ("DATE ks-RECIPE-PATTERN MODEL [ARGS]...:
kl: X top1: Y ppl_ref: R ppl: Z (prune ...)"); the last line of each
(recipe, pattern) wins. WINDOWS ("all" or N, as bench/quality.sh's
EVAL_WINDOWS) keeps only the points evaluated on those windows, so a curve
never mixes the full protocol with a cheaper screen. Unstructured fractions make the left panel's lines;
2:4 and 4:8 (both 50% sparse) get a panel of their own on the right, so
their markers do not hide the 50% points. The legend says which recipe
each colour is, and the tensorbit entry names any override of
examples/prune-model.sh's default (bench/kl_sparsity.sh's TB_RECIPE)."""
import re
import sys

if len(sys.argv) not in (3, 4, 5):
    sys.exit("usage: bench/kl_plot.py QUALITY_TXT OUT_SVG [MODEL [WINDOWS]]")
src, out = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
want = sys.argv[4] if len(sys.argv) > 4 else None
if want is not None and want != "all" and not want.isdigit():
    sys.exit(f"kl_plot: WINDOWS '{want}': expected all or a window count")
LINE = re.compile(r"\S+ ks-(\w+)-([0-9.]+|\d+-\d+) (\S+) \[([^\]]*)\].*?kl: ([0-9.e+-]+)")
pts, args = {}, {}
try:
    lines = open(src).read().splitlines()
except OSError as e:
    sys.exit(f"kl_plot: {src}: {e.strerror}")
for line in lines:
    m = LINE.match(line)
    if not m or (model and m.group(3) != model):
        continue
    c = re.search(r"\[--max-windows (\d+)\]", line)
    cap = c.group(1) if c else "all"
    if want is not None and cap != want:
        continue
    rec, pat = m.group(1), m.group(2)
    pts[(rec, pat)] = (float(m.group(5)), cap)
    args[rec] = m.group(4)
caps = {c for _, c in pts.values()}
pts = {k: v for k, (v, _) in pts.items()}
if not pts:
    sys.exit("kl_plot: no ks-* lines" + (f" for {model}" if model else "") +
             (f" on {want} windows" if want else "") + " in " + src)

# what each curve is; tensorbit's label names overrides of the default recipe
names = {"tensorbit": "tensorbit (default recipe)",
         "anchor": "anchor: SparseGPT + recon + KD",
         "sparsegpt": "SparseGPT", "wanda": "Wanda"}
if "tensorbit" in args:
    # the device is where it ran, not a change of recipe
    over = [a for a in args["tensorbit"].split() if "=" in a and not a.startswith(("PATTERN=", "DEVICE="))]
    if over:
        names["tensorbit"] = "tensorbit (" + " ".join(over) + ")"
colors = {"wanda": "#2ca02c", "sparsegpt": "#d62728", "anchor": "#9467bd", "tensorbit": "#1f77b4"}
recipes = [r for r in colors if any(k[0] == r for k in pts)]

W, H = 800, 440
T, B = 46, 56                 # top and bottom margins
L1, R1 = 62, 392              # unstructured panel: x from L1 to R1
L2, R2 = 432, 532             # N:M panel
LEG = 548                     # legend
xs = (0.3, 0.7)
kmax = max(pts.values())
step = next(s for s in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0) if kmax / s <= 8)
ytop = step * (int(kmax / step) + 1)
def X(s): return L1 + (s - xs[0]) / (xs[1] - xs[0]) * (R1 - L1)
def Y(k): return H - B - k / ytop * (H - T - B)
nm_x = {"4-8": L2 + (R2 - L2) * 0.3, "2-4": L2 + (R2 - L2) * 0.7}

svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
       'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{(L1 + R2) / 2:.0f}" y="20" text-anchor="middle" font-size="14">'
       f'KL(dense || pruned) against sparsity{(" - " + model) if model else ""}</text>',
       f'<text x="{(L1 + R2) / 2:.0f}" y="34" text-anchor="middle" font-size="10" fill="#444">'
       f'tb-run --compare over {"all" if caps == {"all"} else "the first " + "/".join(sorted(caps)) + " of the"} '
       'WikiText-2 protocol windows; calibration: 128 x 512 windows</text>']
# grid and y axis, shared by both panels
for i in range(int(round(ytop / step)) + 1):
    k = step * i
    for a, b in ((L1, R1), (L2, R2)):
        svg.append(f'<line x1="{a}" y1="{Y(k):.1f}" x2="{b}" y2="{Y(k):.1f}" stroke="#e4e4e4"/>')
    svg.append(f'<text x="{L1 - 6}" y="{Y(k) + 4:.1f}" text-anchor="end">{k:g}</text>')
for a, b in ((L1, R1), (L2, R2)):
    svg.append(f'<rect x="{a}" y="{T}" width="{b - a}" height="{H - T - B}" fill="none" stroke="black"/>')
svg.append(f'<text x="16" y="{(T + H - B) / 2:.0f}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(T + H - B) / 2:.0f})">mean KL per token (nats)</text>')
for s in (0.3, 0.4, 0.5, 0.6, 0.7):
    svg.append(f'<text x="{X(s):.1f}" y="{H - B + 16}" text-anchor="middle">{round(s * 100)}%</text>')
svg.append(f'<text x="{(L1 + R1) / 2:.0f}" y="{H - B + 34}" text-anchor="middle">unstructured sparsity</text>')
for pat, x in nm_x.items():
    svg.append(f'<text x="{x:.1f}" y="{H - B + 16}" text-anchor="middle">{pat.replace("-", ":")}</text>')
svg.append(f'<text x="{(L2 + R2) / 2:.0f}" y="{H - B + 34}" text-anchor="middle">N:M (50%)</text>')

for i, rec in enumerate(recipes):
    col = colors[rec]
    line = sorted((float(p), k) for (r, p), k in pts.items() if r == rec and "-" not in p)
    if len(line) > 1:
        svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            col, " ".join(f"{X(s):.1f},{Y(k):.1f}" for s, k in line)))
    for s, k in line:
        svg.append(f'<circle cx="{X(s):.1f}" cy="{Y(k):.1f}" r="3.5" fill="{col}"><title>{rec} {round(s * 100)}%: {k:.3f}</title></circle>')
    nm = [(nm_x[p], pts[(rec, p)], p) for p in ("4-8", "2-4") if (rec, p) in pts]
    if len(nm) == 2:
        svg.append(f'<line x1="{nm[0][0]:.1f}" y1="{Y(nm[0][1]):.1f}" x2="{nm[1][0]:.1f}" y2="{Y(nm[1][1]):.1f}" '
                   f'stroke="{col}" stroke-width="1.5" stroke-dasharray="4 3"/>')
    for x, k, p in nm:
        y = Y(k)
        svg.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{col}">'
                   f'<title>{rec} {p.replace("-", ":")}: {k:.3f}</title></rect>')
    ly = T + 12 + i * 20
    svg.append(f'<line x1="{LEG}" y1="{ly}" x2="{LEG + 22}" y2="{ly}" stroke="{col}" stroke-width="2"/>')
    svg.append(f'<circle cx="{LEG + 11}" cy="{ly}" r="3.5" fill="{col}"/>')
    svg.append(f'<text x="{LEG + 28}" y="{ly + 4}" font-size="11">{names[rec]}</text>')
ny = T + 12 + len(recipes) * 20 + 10
for j, note in enumerate(("circles: unstructured (per-row);", "squares: N:M, both 50% sparse.",
                          "Lower is closer to the dense model.")):
    svg.append(f'<text x="{LEG}" y="{ny + j * 15}" font-size="10" fill="#444">{note}</text>')
svg.append("</svg>")
with open(out, "w") as f:
    f.write("\n".join(svg) + "\n")
print(f"kl_plot: {len(pts)} points -> {out}")
