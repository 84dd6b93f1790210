"""Draw the PruneScope app icon: a magnifier over a small network whose pruned neurons are greyed out.

Writes resources/icons/prunescope.png (256x256, transparent) and prunescope.svg from one geometry.
Run from the repository root: python packaging/make_icon.py
"""
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
SCALE = 4  # draw large, then downsample: Pillow has no anti-aliased primitives
ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"

LENS_CENTRE = (105, 105)
LENS_RADIUS = 76
RING_WIDTH = 14
HANDLE = ((162, 162), (226, 226))
HANDLE_WIDTH = 28

RING = "#263238"
GLASS = (227, 242, 253, 235)
KEPT = "#FB8C00"
PRUNED = "#B0BEC5"
TARGET = "#E53935"

# (x, y, kept?) per layer; the last layer is the explained class.
LAYERS = [
    [(62, 72, True), (62, 105, False), (62, 138, True)],
    [(105, 57, False), (105, 89, True), (105, 121, True), (105, 153, False)],
    [(148, 105, True)],
]
NODE_RADIUS = 9


def _edges():
    for left, right in zip(LAYERS, LAYERS[1:]):
        for a in left:
            for b in right:
                yield a, b, a[2] and b[2]


def draw_png(path: Path) -> None:
    s = SCALE
    img = Image.new("RGBA", (SIZE * s, SIZE * s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    (hx0, hy0), (hx1, hy1) = HANDLE
    d.line([(hx0 * s, hy0 * s), (hx1 * s, hy1 * s)], fill=RING, width=HANDLE_WIDTH * s)
    d.ellipse([(hx1 - HANDLE_WIDTH / 2) * s, (hy1 - HANDLE_WIDTH / 2) * s,
               (hx1 + HANDLE_WIDTH / 2) * s, (hy1 + HANDLE_WIDTH / 2) * s], fill=RING)
    cx, cy = LENS_CENTRE
    r = LENS_RADIUS
    d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s],
              fill=GLASS, outline=RING, width=RING_WIDTH * s)
    for (x0, y0, _), (x1, y1, _), kept in sorted(_edges(), key=lambda e: e[2]):
        d.line([(x0 * s, y0 * s), (x1 * s, y1 * s)],
               fill=KEPT if kept else PRUNED, width=(5 if kept else 2) * s)
    for depth, layer in enumerate(LAYERS):
        for x, y, kept in layer:
            box = [(x - NODE_RADIUS) * s, (y - NODE_RADIUS) * s,
                   (x + NODE_RADIUS) * s, (y + NODE_RADIUS) * s]
            if depth == len(LAYERS) - 1:
                d.ellipse(box, fill=TARGET, outline=RING, width=2 * s)
            elif kept:
                d.ellipse(box, fill=KEPT, outline=RING, width=2 * s)
            else:
                d.ellipse(box, fill="white", outline=PRUNED, width=3 * s)
    img.resize((SIZE, SIZE), Image.LANCZOS).save(path)


def draw_svg(path: Path) -> None:
    (hx0, hy0), (hx1, hy1) = HANDLE
    cx, cy = LENS_CENTRE
    glass = "#%02x%02x%02x" % GLASS[:3]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="0 0 {SIZE} {SIZE}">',
        f'<line x1="{hx0}" y1="{hy0}" x2="{hx1}" y2="{hy1}" stroke="{RING}" '
        f'stroke-width="{HANDLE_WIDTH}" stroke-linecap="round"/>',
        f'<circle cx="{cx}" cy="{cy}" r="{LENS_RADIUS - RING_WIDTH / 2}" fill="{glass}" '
        f'fill-opacity="{GLASS[3] / 255:.2f}" stroke="{RING}" stroke-width="{RING_WIDTH}"/>',
    ]
    for (x0, y0, _), (x1, y1, _), kept in sorted(_edges(), key=lambda e: e[2]):
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" '
                     f'stroke="{KEPT if kept else PRUNED}" stroke-width="{5 if kept else 2}"/>')
    for depth, layer in enumerate(LAYERS):
        for x, y, kept in layer:
            if depth == len(LAYERS) - 1:
                fill, stroke, width = TARGET, RING, 2
            elif kept:
                fill, stroke, width = KEPT, RING, 2
            else:
                fill, stroke, width = "white", PRUNED, 3
            r = NODE_RADIUS - width / 2
            parts.append(f'<circle cx="{x}" cy="{y}" r="{r}" fill="{fill}" '
                         f'stroke="{stroke}" stroke-width="{width}"/>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    ICONS.mkdir(parents=True, exist_ok=True)
    draw_png(ICONS / "prunescope.png")
    draw_svg(ICONS / "prunescope.svg")
