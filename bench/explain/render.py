"""The PNG panels of the explain section, composed with numpy and Pillow (fast, no figures).

A *card* shows one image and what each representation makes of it: titled tiles in
rows (hand-crafted maps, then CNN maps), every tile captioned with the method that
made it and the row it explains. Heat maps are drawn over a grey copy of the image:

* signed maps (exact CAM, occlusion drop) on a diverging scale centred on 0 (red: the
  region raises the predicted class's score / hiding it lowers the probability; blue:
  the opposite), symmetric to the largest absolute value;
* non-negative maps (Grad-CAM, mean activation) on a sequential scale, 0 to max.

Text uses matplotlib's bundled DejaVu Sans, so the cards look the same everywhere.
"""
from __future__ import annotations

import functools
import io
import textwrap

import numpy as np

TILE = 160           # tile side, pixels
PAD = 10
FONT_PX = 10
CAPTION_LINES = 3
TITLE_PX = 13
GRID_BG = 255


@functools.lru_cache(maxsize=8)
def _font(px: int, bold: bool = False):
    from matplotlib import font_manager
    from PIL import ImageFont
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans",
                                                             weight="bold" if bold else "normal"))
    try:
        return ImageFont.truetype(path, px)
    except OSError:  # pragma: no cover - a Pillow without FreeType
        return ImageFont.load_default()


def _cmap(name: str):
    import matplotlib
    return matplotlib.colormaps[name]


def to_u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def gray_rgb(rgb: np.ndarray, lighten: float = 0.35) -> np.ndarray:
    """A light grey copy of an RGB uint8 image (the background of heat maps)."""
    g = np.asarray(rgb, dtype=np.float64)[..., :3].mean(axis=2) / 255.0
    g = lighten + (1 - lighten) * g
    return np.repeat(to_u8(g)[..., None], 3, axis=2)


def resize_to(a: np.ndarray, hw, nearest: bool = False) -> np.ndarray:
    from PIL import Image
    h, w = int(hw[0]), int(hw[1])
    a = np.asarray(a)
    if a.shape[:2] == (h, w):
        return a
    im = Image.fromarray(a)
    return np.asarray(im.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))


def heat_overlay(base_rgb: np.ndarray, m: np.ndarray, signed: bool, alpha: float = 0.6,
                 cmap: str | None = None) -> np.ndarray:
    """``m`` (any size; resized bilinearly) coloured over a grey copy of ``base_rgb``."""
    from .cam import upsample
    h, w = base_rgb.shape[:2]
    m = upsample(np.nan_to_num(np.asarray(m, dtype=np.float64)), (h, w))
    if signed:
        lim = float(np.max(np.abs(m))) or 1.0
        t = 0.5 + 0.5 * m / lim
        colors = _cmap(cmap or "RdBu_r")(t)[..., :3]
        weight = alpha * np.abs(m / lim)[..., None] ** 0.7
    else:
        lo, hi = float(m.min()), float(m.max())
        t = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        colors = _cmap(cmap or "inferno")(t)[..., :3]
        weight = alpha * (0.2 + 0.8 * t[..., None])
    bg = gray_rgb(base_rgb).astype(np.float64) / 255.0
    return to_u8((1 - weight) * bg + weight * colors)


def colorize(m: np.ndarray, cmap: str, vmin=None, vmax=None) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lo = float(np.nanmin(m)) if vmin is None else float(vmin)
    hi = float(np.nanmax(m)) if vmax is None else float(vmax)
    t = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return to_u8(_cmap(cmap)(np.clip(t, 0, 1))[..., :3])


def lbp_colors(codes: np.ndarray, points: int, method: str) -> np.ndarray:
    """Uniform LBP codes ``0..P`` on a perceptual scale, non-uniform (``P + 1``) in grey;
    other methods: codes on a cyclic scale."""
    codes = np.asarray(codes)
    if method == "uniform":
        rgb = colorize(np.minimum(codes, points), "viridis", 0, points)
        rgb[codes > points] = 150
        return rgb
    return colorize(codes % 64, "twilight", 0, 63)


def word_colors(words: np.ndarray) -> np.ndarray:
    """One colour per visual word (tab20, cycling), ``(k, 3)`` uint8."""
    base = np.asarray(_cmap("tab20").colors)
    return to_u8(base[np.asarray(words, dtype=np.int64) % len(base)])


def sift_tile(gray_u8: np.ndarray, info: dict, side: int = TILE) -> np.ndarray:
    """The image with each keypoint's descriptor cell (dense grid: a ``step`` square;
    detected: a circle of the window's radius) coloured by its visual word."""
    from PIL import Image, ImageDraw
    h, w = info["shape"]
    scale = side / max(h, w)
    base = resize_to(gray_rgb(np.repeat(np.asarray(gray_u8)[..., None], 3, 2), 0.2),
                     (round(h * scale), round(w * scale)))
    im = Image.fromarray(base).convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cols = word_colors(info["words"])
    for (x, y), s, c in zip(info["xy"], info["size"], cols):
        if info.get("dense"):
            r = info["step"] / 2 * scale
            d.rectangle([x * scale - r, y * scale - r, x * scale + r - 1, y * scale + r - 1],
                        fill=tuple(int(v) for v in c) + (150,))
        else:
            r = max(2.0, s / 2 * scale)
            d.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r],
                      outline=tuple(int(v) for v in c) + (255,), width=2)
    return np.asarray(Image.alpha_composite(im, layer).convert("RGB"))


def shape_tile(picture: np.ndarray, geo: dict, side: int = TILE) -> np.ndarray:
    """Valid pixels (missing in black), the object footprint (tinted), its outline
    polygon (red) and the minimum-area rectangle (cyan) over the depth picture."""
    from PIL import Image, ImageDraw
    valid = np.asarray(geo["valid"])
    h, w = valid.shape
    pic = resize_to(np.asarray(picture)[..., :3], (h, w))
    rgb = gray_rgb(pic, 0.45).astype(np.float64)
    rgb[~valid] = 0
    if geo.get("footprint") is not None:
        fp = np.asarray(geo["footprint"])
        rgb[fp] = 0.55 * rgb[fp] + 0.45 * np.array([255.0, 200.0, 60.0])
    scale = side / max(h, w)
    im = Image.fromarray(resize_to(rgb.astype(np.uint8), (round(h * scale), round(w * scale)), nearest=True))
    d = ImageDraw.Draw(im)

    def pts(a):
        return [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in np.asarray(a)]
    if geo.get("polygon") is not None and len(geo["polygon"]) >= 2:
        p = pts(geo["polygon"])
        d.line(p + [p[0]], fill=(220, 30, 30), width=2)
    if geo.get("rect_corners") is not None:
        p = pts(geo["rect_corners"])
        d.line(p + [p[0]], fill=(0, 200, 230), width=2)
    return np.asarray(im)


def fit_tile(a: np.ndarray, side: int = TILE, nearest: bool = True) -> np.ndarray:
    """An RGB uint8 array scaled to fit a ``side`` square, centred on white."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    h, w = a.shape[:2]
    scale = side / max(h, w)
    a = resize_to(a, (max(1, round(h * scale)), max(1, round(w * scale))), nearest=nearest and scale >= 1)
    out = np.full((side, side, 3), GRID_BG, dtype=np.uint8)
    oy, ox = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
    out[oy:oy + a.shape[0], ox:ox + a.shape[1]] = a
    return out


def message_tile(text: str, side: int = TILE) -> np.ndarray:
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (side, side), (238, 240, 243))
    d = ImageDraw.Draw(im)
    lines = textwrap.wrap(text, 22)[:6]
    y = side / 2 - len(lines) * (FONT_PX + 2) / 2
    for ln in lines:
        d.text((side / 2, y), ln, fill=(90, 96, 108), font=_font(FONT_PX), anchor="ma")
        y += FONT_PX + 2
    return np.asarray(im)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def card(title: str, subtitle: str, rows: list[tuple[str, list[tuple[np.ndarray, str]]]],
         side: int = TILE) -> bytes:
    """One image's card: a title line, then rows ``(row label, [(tile, caption)])`` of tiles.

    Captions are wrapped to :data:`CAPTION_LINES` lines above each tile (the method and
    the row it explains). Returns PNG bytes.
    """
    from PIL import Image, ImageDraw
    ncol = max((len(t) for _, t in rows), default=1)
    cap_h = CAPTION_LINES * (FONT_PX + 2) + 4
    row_h = TITLE_PX + 6 + cap_h + side + PAD
    width = PAD + ncol * (side + PAD)
    head = 2 * (TITLE_PX + 5) + 4
    height = head + len(rows) * row_h + PAD
    im = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.text((PAD, 4), title, fill=(20, 30, 48), font=_font(TITLE_PX, True))
    d.text((PAD, 4 + TITLE_PX + 5), subtitle, fill=(80, 88, 100), font=_font(FONT_PX + 1))
    y = head
    for label, tiles in rows:
        d.text((PAD, y), label, fill=(31, 78, 121), font=_font(TITLE_PX - 1, True))
        d.line([(PAD, y + TITLE_PX + 3), (width - PAD, y + TITLE_PX + 3)], fill=(201, 209, 220), width=1)
        y0 = y + TITLE_PX + 6
        for j, (tile, caption) in enumerate(tiles):
            x = PAD + j * (side + PAD)
            lines = []
            for part in str(caption).split("\n"):
                lines += textwrap.wrap(part, max(8, int(side / (FONT_PX * 0.56)))) or [""]
            if len(lines) > CAPTION_LINES:
                lines = lines[:CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1][:-1] + "…"]
            for k, ln in enumerate(lines):
                d.text((x, y0 + k * (FONT_PX + 2)), ln, fill=(29, 35, 48), font=_font(FONT_PX))
            im.paste(Image.fromarray(fit_tile(tile, side)), (x, y0 + cap_h))
        y += row_h
    return png_bytes(np.asarray(im))


def filter_grid(kernel: np.ndarray, title: str, cell: int = 32, max_filters: int = 64,
                per_row: int = 16) -> bytes:
    """The first convolution's kernels ``(kh, kw, in, out)`` as a grid of small pictures.

    Each filter is scaled on its own to its largest absolute weight (grey = 0); 3-input
    filters are shown as RGB, others as the mean over inputs in grey. Returns PNG bytes.
    """
    from PIL import Image, ImageDraw
    k = np.asarray(kernel, dtype=np.float64)
    kh, kw, cin, cout = k.shape
    n = min(cout, max_filters)
    cols = min(per_row, n)
    rows = -(-n // cols)
    gap = 4
    head = 2 * (TITLE_PX + 4)
    width = max(gap + cols * (cell + gap), 360)
    im = Image.new("RGB", (width, head + rows * (cell + gap) + gap), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for li, ln in enumerate(textwrap.wrap(title, int(width / (TITLE_PX * 0.56)))[:2]):
        d.text((gap, 2 + li * (TITLE_PX + 3)), ln, fill=(20, 30, 48), font=_font(TITLE_PX - 1, True))
    for i in range(n):
        f = k[..., i]
        f = f if cin == 3 else np.repeat(f.mean(axis=2, keepdims=True), 3, axis=2)
        lim = float(np.max(np.abs(f))) or 1.0
        pic = to_u8(0.5 + 0.5 * f / lim)
        pic = resize_to(pic, (cell, cell), nearest=True)
        r, c = divmod(i, cols)
        im.paste(Image.fromarray(pic), (gap + c * (cell + gap), head + r * (cell + gap)))
    return png_bytes(np.asarray(im))
