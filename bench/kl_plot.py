#!/usr/bin/env python3
"""KL(dense || pruned) against sparsity, one line per recipe, as an SVG.

usage: bench/kl_plot.py QUALITY_TXT OUT_SVG [MODEL]

Reads the lines bench/quality.sh appends ("DATE ks-RECIPE-PATTERN MODEL [...]:
kl: X top1: Y ... ppl: Z ..."); the last line of each (recipe, pattern) wins.
Unstructured fractions go on the x axis; 2:4 and 4:8 (50% sparse) are drawn
as separate markers at x = 0.5, labelled."""
import re
import sys

src, out = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else None
pts = {}
for line in open(src):
    m = re.match(r"\S+ ks-(\w+)-([0-9.]+|\d+-\d+) (\S+) .*?kl: ([0-9.e+-]+)", line)
    if not m or (model and m.group(3) != model):
        continue
    pts[(m.group(1), m.group(2))] = float(m.group(4))
if not pts:
    sys.exit("kl_plot: no ks-* lines in " + src)
colors = {"tensorbit": "#1f77b4", "sparsegpt": "#d62728", "wanda": "#2ca02c"}
W, H, L, R, T, B = 640, 420, 70, 150, 30, 50
xs = [0.3, 0.7]
kmax = max(pts.values()) * 1.1
def X(s): return L + (s - xs[0]) / (xs[1] - xs[0]) * (W - L - R)
def Y(k): return H - B - k / kmax * (H - T - B)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle">KL(dense || pruned) vs sparsity{(" - " + model) if model else ""}</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>']
for s in [0.3, 0.4, 0.5, 0.6, 0.7]:
    svg.append(f'<text x="{X(s):.1f}" y="{H-B+16}" text-anchor="middle">{int(s*100)}%</text>')
for i in range(6):
    k = kmax * i / 5
    svg.append(f'<text x="{L-6}" y="{Y(k)+4:.1f}" text-anchor="end">{k:.2f}</text>')
    svg.append(f'<line x1="{L}" y1="{Y(k):.1f}" x2="{W-R}" y2="{Y(k):.1f}" stroke="#ddd"/>')
svg.append(f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">unstructured sparsity (2:4, 4:8 at 50%)</text>')
for i, (rec, col) in enumerate(colors.items()):
    line = sorted((float(p), k) for (r, p), k in pts.items() if r == rec and "-" not in p)
    if line:
        svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            col, " ".join(f"{X(s):.1f},{Y(k):.1f}" for s, k in line)))
        for s, k in line:
            svg.append(f'<circle cx="{X(s):.1f}" cy="{Y(k):.1f}" r="3" fill="{col}"/>')
    for pat, shape in (("2-4", "square"), ("4-8", "diamond")):
        if (rec, pat) in pts:
            x, y = X(0.5), Y(pts[(rec, pat)])
            if shape == "square":
                svg.append(f'<rect x="{x-4:.1f}" y="{y-4:.1f}" width="8" height="8" fill="none" stroke="{col}" stroke-width="2"/>')
            else:
                svg.append(f'<polygon points="{x:.1f},{y-5:.1f} {x+5:.1f},{y:.1f} {x:.1f},{y+5:.1f} {x-5:.1f},{y:.1f}" fill="none" stroke="{col}" stroke-width="2"/>')
            svg.append(f'<text x="{x+8:.1f}" y="{y+4:.1f}" fill="{col}" font-size="10">{pat.replace("-", ":")}</text>')
    svg.append(f'<line x1="{W-R+15}" y1="{T+20+i*18}" x2="{W-R+35}" y2="{T+20+i*18}" stroke="{col}" stroke-width="2"/>')
    svg.append(f'<text x="{W-R+40}" y="{T+24+i*18}">{rec}</text>')
svg.append(f'<text x="{W-R+15}" y="{T+90}" font-size="10">square 2:4, diamond 4:8</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
print(f"kl_plot: {len(pts)} points -> {out}")
