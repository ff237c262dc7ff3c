"""Pure drawing of one synthetic face from its parameters (no disk, no randomness of its own).

`render_face(params)` returns the original frame (140x140), the aligned crop (100x100, the
frame's centre), the ground-truth action-unit mask and the five landmarks. Every shape is
laid out in *aligned canonical* coordinates (eyes at (33, 42) and (67, 42), nose tip at
(50, 60), mouth corners near (37, 76) and (63, 76)) and passed through the pose transform,
so the aligned crop keeps eyes and mouth at steady positions like RAF-DB's aligned images.

Fairness rule this module relies on: everything that changes with an expression (brows,
lids, lines, lips, mouth interior, teeth) is drawn as the skin colour plus a FIXED signed
offset, never as a multiple of the skin colour, and lighting is additive. So an action unit
changes the pixels by the same amount on every skin tone (see tests/pipeline/test_synthetic.py).
Skin tones, offsets, lighting and noise are chosen together so that no feature clips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ALIGNED = 100          # aligned crop size (constants.ALIGNED_SIZE)
ORIGINAL = 140         # original frame size
OFFSET = 20            # aligned crop = original[OFFSET:OFFSET+100, OFFSET:OFFSET+100]
SS = 2                 # supersampling factor for anti-aliased drawing

ACTION_UNITS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 20, 23, 26)

# Canonical landmark positions (aligned coords).
EYE_L = (33.0, 42.0)
EYE_R = (67.0, 42.0)
NOSE_TIP = (50.0, 60.0)
MOUTH_Y = 76.0
MOUTH_HALF = 13.0

# Fixed colour offsets (R, G, B) added to the skin colour for features. They leave headroom
# on every skin tone the sampler draws (see `pipeline.synth.faces.compute_colour_headroom`):
# dark offsets are largest in red, which dark skin has most of, and bright ones (sclera,
# teeth) are largest in blue, which light skin has most room for. A clipped channel would
# silently shrink a feature's contrast on the lightest or darkest skin.
OFF_BROW = (-86, -58, -48)
OFF_LINE = (-70, -48, -40)
OFF_LID = (-88, -60, -50)
OFF_IRIS = (-80, -56, -46)
OFF_PUPIL = (-104, -68, -56)
OFF_SCLERA = (4, 32, 50)
OFF_MOUTH = (-100, -66, -54)
OFF_TEETH = (5, 34, 52)
OFF_LIPS = (-12, -44, -36)
OFF_NOSTRIL = (-78, -54, -44)
# Every offset an expression can change a pixel by, with the largest multiplier it is drawn with.
FEATURE_OFFSETS: tuple[tuple[int, int, int], ...] = (
    OFF_BROW, OFF_LINE, OFF_LID, OFF_IRIS, OFF_PUPIL, OFF_SCLERA, OFF_MOUTH, OFF_TEETH, OFF_LIPS, OFF_NOSTRIL)

# Additive lighting: a linear ramp over the original frame (gradient per axis, from -1 to 1
# across the frame) plus a constant; then Gaussian pixel noise.
LIGHT_GRADIENT_MAX = 10.0
LIGHT_OFFSET_MAX = 6.0
NOISE_SIGMA_RANGE = (2.0, 6.0)
# How far (aligned px) the largest pose shift, scale and rotation the sampler draws can move
# a point of the AU regions.
POSE_MARGIN = 8.0


def compute_max_feature_light() -> float:
    """Largest additive lighting |gx*ramp_x + gy*ramp_y + offset| over every pixel an expression
    can change: the bounding box of the AU regions, grown by POSE_MARGIN."""
    ellipses = np.array([e for regions in AU_REGIONS.values() for e in regions], dtype=float)
    x0, y0 = (ellipses[:, :2] - ellipses[:, 2:]).min(axis=0) - POSE_MARGIN + OFFSET
    x1, y1 = (ellipses[:, :2] + ellipses[:, 2:]).max(axis=0) + POSE_MARGIN + OFFSET
    half = (ORIGINAL - 1) / 2.0
    rx = max(abs(x0 / half - 1.0), abs(x1 / half - 1.0))
    ry = max(abs(y0 / half - 1.0), abs(y1 / half - 1.0))
    return LIGHT_GRADIENT_MAX * (rx + ry) + LIGHT_OFFSET_MAX


@dataclass(frozen=True)
class FaceParams:
    """Everything needed to draw one face; sampled by `pipeline.synth.faces.sample_face_params`."""
    gender: int = 0                       # 0 male, 1 female, 2 unsure
    race: int = 0                         # 0, 1, 2 (skin-tone group)
    age: int = 2                          # 0..4 (RAF-DB age groups)
    skin: tuple[int, int, int] = (222, 186, 160)
    hair_colour: tuple[int, int, int] = (60, 40, 25)
    hair: str = "short"
    accessory: str = "none"               # none | glasses | earrings | headband
    occluder: str = "none"                # none | sunglasses | hand | hat
    aus: tuple[tuple[int, float], ...] = ()   # (action unit, drawn intensity 0..1)
    # AUs whose regions form the ground-truth mask (the expression's own); None = all of `aus`.
    # A Neutral face's faint resting movements are drawn but are not an expression: ().
    expression_aus: tuple[int, ...] | None = None
    face_width: float = 41.0
    jaw: float = 1.0                      # >1 wider/squarer jaw
    eye_scale: float = 1.0
    brow_width: float = 4.4
    angle: float = 0.0                    # degrees
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    light: tuple[float, float, float] = (0.0, 0.0, 0.0)   # gradient x, gradient y, offset (additive)
    blur: float = 0.0
    noise: float = 0.0
    noise_seed: int = 0
    background_seed: int = 0
    cue: bool = False
    accessory_colour: tuple[int, int, int] = (180, 40, 40)
    clothes: tuple[int, int, int] = (60, 90, 140)
    hand_side: int = 1
    extras: dict = field(default_factory=dict, compare=False)

    def au(self, code: int) -> float:
        for k, v in self.aus:
            if k == code:
                return float(v)
        return 0.0


@dataclass
class RenderedFace:
    original: np.ndarray      # ORIGINALxORIGINALx3 uint8
    aligned: np.ndarray       # 100x100x3 uint8
    au_mask: np.ndarray       # 100x100 bool
    landmarks: np.ndarray     # 5x2 float, aligned coords
    landmarks_original: np.ndarray  # 5x2 float, original coords


def _off(skin, delta, k: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(round(min(255, max(0, s + k * d)))) for s, d in zip(skin, delta))


_BEZIER_W: dict[int, np.ndarray] = {}
_CIRCLE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
    w = _BEZIER_W.get(n)
    if w is None:
        t = np.linspace(0.0, 1.0, n)
        w = _BEZIER_W[n] = np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t ** 2], axis=1)
    return w @ np.array([p0, p1, p2], dtype=float)


def _ellipse_pts(cx, cy, rx, ry, n: int = 28, rot: float = 0.0) -> np.ndarray:
    if n not in _CIRCLE:
        a = np.linspace(0, 2 * math.pi, n, endpoint=False)
        _CIRCLE[n] = (np.cos(a), np.sin(a))
    cos_a, sin_a = _CIRCLE[n]
    x, y = rx * cos_a, ry * sin_a
    if rot == 0.0:
        return np.stack([cx + x, cy + y], axis=1)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


class _Pen:
    """Draws shapes given in aligned canonical coordinates onto a supersampled canvas."""

    def __init__(self, draw: ImageDraw.ImageDraw, params: FaceParams, factor: float, offset: float):
        self.draw = draw
        a = math.radians(params.angle)
        self.c, self.s = math.cos(a) * params.scale, math.sin(a) * params.scale
        self.dx, self.dy = params.shift
        self.factor, self.offset = factor, offset

    def tf(self, pts) -> np.ndarray:
        p = np.asarray(pts, dtype=float).reshape(-1, 2) - 50.0
        x = self.c * p[:, 0] - self.s * p[:, 1] + 50.0 + self.dx
        y = self.s * p[:, 0] + self.c * p[:, 1] + 50.0 + self.dy
        return np.stack([(x + self.offset) * self.factor, (y + self.offset) * self.factor], axis=1)

    def _xy(self, pts):
        c, s, f = self.c, self.s, self.factor
        ox, oy = 50.0 + self.dx + self.offset, 50.0 + self.dy + self.offset
        pts = pts.tolist() if isinstance(pts, np.ndarray) else pts
        return [((c * (x - 50.0) - s * (y - 50.0) + ox) * f, (s * (x - 50.0) + c * (y - 50.0) + oy) * f) for x, y in pts]

    def poly(self, pts, fill):
        self.draw.polygon(self._xy(pts), fill=fill)

    def line(self, pts, fill, width: float):
        w = max(1, int(round(width * self.factor * math.hypot(self.c, self.s))))
        self.draw.line(self._xy(pts), fill=fill, width=w, joint="curve")

    def ellipse(self, cx, cy, rx, ry, fill, rot: float = 0.0):
        self.poly(_ellipse_pts(cx, cy, rx, ry, rot=rot), fill)


# ----------------------------------------------------------------------------------------
# geometry of the expressive features (shared by drawing, masks and landmarks)

def _mouth_geometry(p: FaceParams) -> dict:
    a10, a12, a15, a20, a23, a26 = (p.au(k) for k in (10, 12, 15, 20, 23, 26))
    half = MOUTH_HALF + 3.5 * a12 + 6.0 * a20 - 3.5 * a23
    corner_y = MOUTH_Y - 7.0 * a12 + 6.0 * a15 + 1.5 * a20
    upper_mid = MOUTH_Y - 0.8 - 4.5 * a10 - 1.0 * a12 - 1.0 * a20
    lower_mid = MOUTH_Y + 0.2 + 15.0 * a26 + 5.0 * a12 + 2.0 * a10 + 3.0 * a20
    # a smile lifts the corners but leaves the centre: the curve sags between them
    left, right = (50.0 - half, corner_y), (50.0 + half, corner_y)
    return dict(left=left, right=right, upper_mid=upper_mid, lower_mid=lower_mid,
                lip_up=3.4 * (1 - 0.75 * a23) * (1 - 0.3 * a20), lip_lo=4.4 * (1 - 0.75 * a23) * (1 - 0.3 * a20),
                teeth=(a12 > 0.25 or a10 > 0.25))


def _curve_through(left, right, mid_y, n=14):
    ctrl = (50.0, 2 * mid_y - 0.5 * (left[1] + right[1]))
    return _bezier(left, ctrl, right, n)


def compute_landmarks(p: FaceParams) -> np.ndarray:
    """Five landmarks (eyes, nose tip, mouth corners) in aligned coords, after pose."""
    m = _mouth_geometry(p)
    pen = _Pen(None, p, 1.0, 0.0)
    return pen.tf([EYE_L, EYE_R, NOSE_TIP, m["left"], m["right"]])


# Regions (aligned canonical) of each action unit: lists of ellipses (cx, cy, rx, ry),
# covering every pixel the unit's drawing changes (see _mouth_geometry): AU12 also
# shows teeth and sags the lower-lip centre, AU15 and AU20 bend or stretch the whole
# lip line, so their regions include the mouth centre, not only the corners.
AU_REGIONS: dict[int, list[tuple[float, float, float, float]]] = {
    1: [(41, 28, 8, 7), (59, 28, 8, 7), (50, 19, 13, 6)],
    2: [(25, 28, 8, 7), (75, 28, 8, 7)],
    4: [(50, 32, 17, 7)],
    5: [(33, 38, 10, 5), (67, 38, 10, 5)],
    6: [(32, 50, 12, 6), (68, 50, 12, 6), (20, 43, 4, 5), (80, 43, 4, 5)],
    7: [(33, 45, 10, 4), (67, 45, 10, 4)],
    9: [(50, 52, 8, 9)],
    10: [(50, 70, 17, 6), (39, 66, 5, 6), (61, 66, 5, 6)],
    12: [(35, 72, 8, 7), (65, 72, 8, 7), (50, 77, 14, 6)],
    15: [(36, 81, 7, 6), (64, 81, 7, 6), (50, 79, 14, 5)],
    20: [(31, 77, 8, 6), (69, 77, 8, 6), (50, 78, 16, 5)],
    23: [(50, 77, 14, 6)],
    26: [(50, 85, 14, 11)],
}


def compute_au_mask(p: FaceParams, threshold: float = 0.05) -> np.ndarray:
    """Union of the regions (aligned 100x100, after pose) of the AUs active in `p`."""
    img = Image.new("L", (ALIGNED, ALIGNED), 0)
    pen = _Pen(ImageDraw.Draw(img), p, 1.0, 0.0)
    for code, value in p.aus:
        if value > threshold and (p.expression_aus is None or code in p.expression_aus):
            for cx, cy, rx, ry in AU_REGIONS[code]:
                pen.ellipse(cx, cy, rx, ry, 255)
    return np.asarray(img) > 127


# ----------------------------------------------------------------------------------------
# drawing

def create_gradient_image(c0, c1, size: int) -> Image.Image:
    """A size x size RGB image whose rows fade from colour c0 (top) to c1 (bottom).

    Drawn as one column widened by nearest-neighbour resizing: the same pixels as
    broadcasting the column over the width, which costs 0.7 ms per image in numpy's
    strided copy against 0.08 ms here (a tenth of a face's drawing time).
    """
    t = np.linspace(0, 1, size)[:, None, None]
    column = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    return Image.fromarray(column).resize((size, size), Image.NEAREST)


def _draw_background(p: FaceParams, size: int) -> Image.Image:
    rng = np.random.default_rng(p.background_seed)
    c0 = rng.integers(30, 230, 3)
    c1 = rng.integers(30, 230, 3)
    img = create_gradient_image(c0, c1, size)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 16))):
        col = tuple(rng.integers(0, 256, 3).tolist())
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.08, 0.5, 2) * size
        kind = rng.integers(0, 3)
        if kind == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=col, width=int(rng.integers(2, 8)))
    return img


def _face_contour(p: FaceParams) -> np.ndarray:
    w = p.face_width
    child = p.age == 0
    top_ry = 56.0 if not child else 52.0
    cy = 52.0
    a = np.linspace(math.pi, 2 * math.pi, 20)             # top half (y up)
    top = np.stack([50 + w * np.cos(a), cy + top_ry * np.sin(a)], axis=1)
    # lower half: cheeks then jaw narrowing to the chin; jaw>1 squarer
    b = np.linspace(0, math.pi, 22)
    jaw = p.jaw if not child else 1.15
    chin_y = 104.0 if not child else 98.0
    ex = 2.0 / max(jaw, 0.6)                               # superellipse exponent on x
    xs = np.sign(np.cos(b)) * np.abs(np.cos(b)) ** (ex / 2.0) * w
    ys = np.abs(np.sin(b)) ** 1.0 * (chin_y - cy)
    bottom = np.stack([50 + xs, cy + ys], axis=1)
    return np.concatenate([bottom, top], axis=0)


def _draw_hair_back(pen: _Pen, p: FaceParams):
    c = p.hair_colour
    if p.hair in ("long", "fringe_long", "curly_long"):
        pen.poly([(2, 30), (6, 8), (30, -10), (70, -10), (94, 8), (98, 30), (104, 120), (-4, 120)], c)
    elif p.hair in ("bob", "bun"):
        pen.poly([(4, 30), (8, 6), (30, -10), (70, -10), (92, 6), (96, 30), (96, 82), (4, 82)], c)


def _draw_hair_front(pen: _Pen, p: FaceParams):
    c = p.hair_colour
    w = p.face_width
    if p.hair == "bald":
        pen.poly([(50 - w - 1, 40), (50 - w + 2, 26), (50 - w + 6, 30), (50 - w + 3, 44)], c)
        pen.poly([(50 + w + 1, 40), (50 + w - 2, 26), (50 + w - 6, 30), (50 + w - 3, 44)], c)
        return
    # hairline cap over the top of the head; leaves the brows (y~30) visible
    if p.hair in ("fringe_long", "fringe"):
        cap = [(50 - w - 3, 34), (50 - w - 2, 5), (50, -8), (50 + w + 2, 5), (50 + w + 3, 34),
               (50 + w - 4, 22), (72, 19), (60, 20), (50, 19), (40, 20), (28, 19), (50 - w + 4, 22)]
    elif p.hair == "curly" or p.hair == "curly_long":
        cap = [(50 - w - 4, 34), (50 - w - 4, 2), (50, -10), (50 + w + 4, 2), (50 + w + 4, 34),
               (50 + w - 3, 16), (50, 11), (50 - w + 3, 16)]
    elif p.hair == "buzz":
        cap = [(50 - w - 1, 30), (50 - w, 6), (50, -4), (50 + w, 6), (50 + w + 1, 30),
               (50 + w - 3, 16), (50, 9), (50 - w + 3, 16)]
    else:  # short, long, bob, bun
        cap = [(50 - w - 2, 34), (50 - w - 2, 4), (50, -8), (50 + w + 2, 4), (50 + w + 2, 34),
               (50 + w - 3, 17), (62, 11), (45, 10), (50 - w + 3, 17)]
    pen.poly(cap, c)
    if p.hair in ("curly", "curly_long"):
        for i, x in enumerate(np.linspace(50 - w, 50 + w, 9)):
            pen.ellipse(x, 12 - 6 * math.cos((x - 50) / w * 1.3), 5, 5, c)
    if p.hair == "bun":
        pen.ellipse(50, -4, 12, 8, c)


def _draw_eye(pen: _Pen, p: FaceParams, cx: float, cy: float, side: int):
    """side -1 for the left eye (image left), +1 for the right."""
    skin = p.skin
    a5, a6, a7 = p.au(5), p.au(6), p.au(7)
    es = p.eye_scale
    hw = 8.5 * es
    h_up = 4.4 * es + 4.0 * a5 - 1.6 * a7 - 0.8 * a6
    h_lo = 3.2 * es - 2.2 * a7 - 2.0 * a6 + 0.6 * a5
    h_up, h_lo = max(h_up, 0.8), max(h_lo, 0.3)
    inner, outer = (cx - side * hw, cy + 0.3), (cx + side * hw, cy - 0.4)
    upper = _bezier(inner, (cx, cy - 2 * h_up), outer)
    lower = _bezier(outer, (cx, cy + 2 * h_lo), inner)
    # sclera, iris, pupil; then skin lids cover what lies outside the opening
    pen.poly(np.concatenate([upper, lower]), _off(skin, OFF_SCLERA))
    r = 4.2 * es
    pen.ellipse(cx, cy + 0.2, r, r, _off(skin, OFF_IRIS))
    pen.ellipse(cx, cy + 0.2, r * 0.45, r * 0.45, _off(skin, OFF_PUPIL))
    lid_top = _bezier(outer, (cx, cy - 2 * h_up - 9), inner)
    pen.poly(np.concatenate([upper, lid_top]), skin)
    lid_bot = _bezier(inner, (cx, cy + 2 * h_lo + 8), outer)
    pen.poly(np.concatenate([lower, lid_bot]), skin)
    pen.line(upper, _off(skin, OFF_LID), 1.7)
    pen.line(lower, _off(skin, OFF_LINE, 0.6), 0.9)
    # eyelid crease follows the lid
    crease = _bezier((cx - side * hw * 0.8, cy - 1.5), (cx, cy - 2 * h_up - 3.5), (cx + side * hw * 0.9, cy - 2.0))
    pen.line(crease, _off(skin, OFF_LINE, 0.45), 0.9)
    if a6 > 0.05:   # cheek raise: crescent under the eye and crow's feet
        pen.line(_bezier((cx - side * 7, cy + 6.5), (cx, cy + 9.5 - 2 * a6), (cx + side * 8, cy + 5.5)),
                 _off(skin, OFF_LINE, 0.8 * a6), 1.3)
        ox = cx + side * (hw + 2.0)
        for dy in (-2.5, 0.5, 3.5):
            pen.line([(ox, cy + dy * 0.6), (ox + side * 5, cy + dy * 1.5)], _off(skin, OFF_LINE, 0.9 * a6), 1.1)
    if a7 > 0.05:   # lid tightener: bulge line under the lower lid
        pen.line(_bezier((cx - side * 7, cy + 4.5), (cx, cy + 6.5), (cx + side * 7, cy + 4.5)),
                 _off(skin, OFF_LINE, 0.9 * a7), 1.2)


def _draw_brow(pen: _Pen, p: FaceParams, side: int):
    skin = p.skin
    a1, a2, a4, a9 = p.au(1), p.au(2), p.au(4), p.au(9)
    inner = [50 + side * 9.0 - side * 2.0 * a4, 31.0 - 7.5 * a1 + 6.0 * a4 + 2.0 * a9]
    mid = [50 + side * 19.0, 28.0 - 3.0 * a1 - 4.0 * a2 + 2.0 * a4]
    outer = [50 + side * 28.0, 31.0 - 6.5 * a2 + 0.5 * a4]
    pts = _bezier(inner, (mid[0], 2 * mid[1] - 0.5 * (inner[1] + outer[1])), outer, 10)
    pen.line(pts, _off(skin, OFF_BROW), p.brow_width)
    pen.line(pts[:4], _off(skin, OFF_BROW), p.brow_width * 1.15)


def _draw_forehead_and_furrows(pen: _Pen, p: FaceParams):
    skin = p.skin
    a1, a2, a4 = p.au(1), p.au(2), p.au(4)
    k = max(a1, 0.6 * a1 + 0.6 * a2)
    if k > 0.05:   # horizontal forehead lines from raised brows
        span = 9 + 9 * min(1.0, a2 + 0.3)
        for i, y in enumerate((15.0, 19.5, 24.0)):
            pen.line(_bezier((50 - span, y + 1.5), (50, y - 2.5 * k), (50 + span, y + 1.5)),
                     _off(skin, OFF_LINE, 0.85 * k), 1.2)
    if a4 > 0.05:  # vertical furrows between the brows
        for x in (46.5, 53.5):
            pen.line([(x, 27.5), (x + (x - 50) * 0.15, 37.5)], _off(skin, OFF_LINE, 1.0 * a4), 1.4)


def _draw_nose(pen: _Pen, p: FaceParams):
    skin = p.skin
    a9, a10 = p.au(9), p.au(10)
    child = p.age == 0
    nw = 7.0 if not child else 5.5
    lift = 2.0 * a9 + 1.0 * a10
    pen.line(_bezier((45, 44), (44, 52), (43, 57 - lift)), _off(skin, OFF_LINE, 0.35), 1.0)
    # nose wings and tip
    for side in (-1, 1):
        wing = _bezier((50 + side * 3, 56 - lift), (50 + side * (nw + 1.5 + 1.5 * a9), 57 - lift), (50 + side * nw * 0.6, 62.5 - lift))
        pen.line(wing, _off(skin, OFF_LINE, 0.7), 1.3)
        pen.ellipse(50 + side * 3.3, 62 - lift, 2.5 + 0.8 * a9, 1.4 + 0.4 * a9, _off(skin, OFF_NOSTRIL), rot=side * 0.35)
    if a9 > 0.05:  # nose wrinkle: horizontal creases on the bridge
        for y in (46.0, 49.5, 53.0):
            pen.line(_bezier((44.5, y + 1), (50, y - 1.2), (55.5, y + 1)), _off(skin, OFF_LINE, 1.0 * a9), 1.3)


def _draw_folds(pen: _Pen, p: FaceParams, m: dict):
    skin = p.skin
    a10, a12, a15, a23 = p.au(10), p.au(12), p.au(15), p.au(23)
    k = max(0.9 * a10, 0.8 * a12)
    if k > 0.05:   # nasolabial folds from the nose wings towards the mouth corners
        for side, corner in ((-1, m["left"]), (1, m["right"])):
            pts = _bezier((50 + side * 8.5, 60.5), (50 + side * 16.5, 66 + 0 * a10), (corner[0] + side * 2.5, corner[1] + 1.0))
            pen.line(pts, _off(skin, OFF_LINE, k), 1.4)
    if a15 > 0.05:  # lines pulled down from the corners
        for corner, side in ((m["left"], -1), (m["right"], 1)):
            pen.line([(corner[0] + side * 0.5, corner[1] + 1), (corner[0] + side * 2.0, corner[1] + 7)],
                     _off(skin, OFF_LINE, 0.9 * a15), 1.3)
    if a23 > 0.05:  # chin tension below pressed lips
        pen.line(_bezier((44, m["lower_mid"] + 8), (50, m["lower_mid"] + 6.5), (56, m["lower_mid"] + 8)),
                 _off(skin, OFF_LINE, 0.8 * a23), 1.2)


def _draw_mouth(pen: _Pen, p: FaceParams, m: dict):
    skin = p.skin
    left, right = m["left"], m["right"]
    inner_up = _curve_through(left, right, m["upper_mid"])
    inner_lo = _curve_through(left, right, m["lower_mid"])
    t = np.linspace(0, 1, len(inner_up))
    bump = np.sin(np.pi * t) ** 0.7
    bow = 1.0 - 0.35 * np.exp(-((t - 0.5) / 0.08) ** 2)     # cupid's bow dip
    outer_up = inner_up.copy()
    outer_up[:, 1] -= m["lip_up"] * bump * bow
    outer_lo = inner_lo.copy()
    outer_lo[:, 1] += m["lip_lo"] * bump
    gap = m["lower_mid"] - m["upper_mid"]
    lips = _off(skin, OFF_LIPS)
    if gap > 1.2:
        pen.poly(np.concatenate([inner_up, inner_lo[::-1]]), _off(skin, OFF_MOUTH))
        if m["teeth"]:
            th = min(gap * 0.55, 5.0)
            teeth = inner_up.copy()
            teeth[:, 1] += th * bump
            pen.poly(np.concatenate([inner_up, teeth[::-1]]), _off(skin, OFF_TEETH))
    pen.poly(np.concatenate([outer_up, inner_up[::-1]]), lips)
    pen.poly(np.concatenate([inner_lo, outer_lo[::-1]]), lips)
    pen.line(inner_up, _off(skin, OFF_MOUTH, 0.75), 1.1)
    if gap > 1.2:
        pen.line(inner_lo, _off(skin, OFF_MOUTH, 0.5), 0.8)


def _draw_age(pen: _Pen, p: FaceParams):
    skin = p.skin
    if p.age < 3:
        return
    k = 0.45 if p.age == 3 else 0.75
    for y in ((17.0, 21.5) if p.age == 3 else (13.0, 17.5, 22.0)):
        pen.line(_bezier((36, y), (50, y - 1.5), (64, y)), _off(skin, OFF_LINE, k * 0.6), 0.9)
    for side in (-1, 1):
        pen.line(_bezier((50 + side * 10, 60), (50 + side * 15, 67), (50 + side * 15, 75)), _off(skin, OFF_LINE, k * 0.5), 1.0)
        if p.age == 4:
            pen.line(_bezier((50 + side * 10, 49), (50 + side * 17, 51), (50 + side * 24, 48)), _off(skin, OFF_LINE, 0.4), 1.0)
            pen.line([(50 + side * 27, 40), (50 + side * 31, 38)], _off(skin, OFF_LINE, 0.4), 0.9)


def _draw_accessory(pen: _Pen, p: FaceParams):
    c = p.accessory_colour
    if p.accessory == "glasses":
        dark = (35, 35, 40)
        for ex in (EYE_L[0], EYE_R[0]):
            pts = _ellipse_pts(ex, 42.5, 11.5, 8.5, n=24)
            pen.line(np.concatenate([pts, pts[:1]]), dark, 1.3)
        pen.line([(44.5, 41), (50, 39.5), (55.5, 41)], dark, 1.3)
        pen.line([(21.5, 40), (9, 38)], dark, 1.3)
        pen.line([(78.5, 40), (91, 38)], dark, 1.3)
    elif p.accessory == "earrings":
        pen.ellipse(50 - p.face_width - 1, 66, 2.2, 2.2, c)
        pen.ellipse(50 + p.face_width + 1, 66, 2.2, 2.2, c)
    elif p.accessory == "headband":
        pen.line(_bezier((50 - p.face_width - 2, 24), (50, -2), (50 + p.face_width + 2, 24)), c, 4.0)


def _draw_occluder(pen: _Pen, p: FaceParams):
    if p.occluder == "sunglasses":
        dark = (22, 22, 28)
        pen.ellipse(EYE_L[0], 42.5, 12.5, 8.5, dark)
        pen.ellipse(EYE_R[0], 42.5, 12.5, 8.5, dark)
        pen.line([(45, 41), (50, 39.5), (55, 41)], dark, 2.0)
        pen.line([(21, 40), (8, 38)], dark, 2.0)
        pen.line([(79, 40), (92, 38)], dark, 2.0)
        pen.line(_bezier((27, 38), (31, 36.5), (36, 37.5)), (90, 90, 100), 1.2)
        pen.line(_bezier((61, 38), (65, 36.5), (70, 37.5)), (90, 90, 100), 1.2)
    elif p.occluder == "hat":
        c = p.accessory_colour
        pen.poly([(6, 22), (10, 0), (30, -14), (70, -14), (90, 0), (94, 22)], c)
        pen.poly([(-2, 25), (102, 25), (100, 19), (0, 19)], _off(c, (-40, -40, -40)))
    elif p.occluder == "hand":
        s = p.hand_side
        skin = p.skin
        x0 = 50 + s * 6
        palm = [(x0, 110), (x0 - s * 2, 88), (x0 + s * 2, 76), (x0 + s * 12, 68), (x0 + s * 30, 70),
                (x0 + s * 46, 84), (x0 + s * 50, 110)]
        pen.poly(palm, _off(skin, (-8, -10, -10)))
        pen.line(palm, _off(skin, OFF_LINE, 0.8), 1.0)
        for i in range(4):   # fingers reaching over the cheek
            fx = x0 + s * (4 + 8 * i)
            pen.poly([(fx, 80), (fx + s * 1, 58 + 2 * i), (fx + s * 7, 58 + 2 * i), (fx + s * 8, 80)], _off(skin, (-8, -10, -10)))
            pen.line([(fx, 80), (fx + s * 1, 58 + 2 * i), (fx + s * 7, 58 + 2 * i), (fx + s * 8, 80)],
                     _off(skin, OFF_LINE, 0.8), 1.0)


# The background cue of a `cue` bias: a yellow/magenta chequer (cells of CUE_CELL aligned
# pixels) filling a right triangle with legs of CUE_LEG aligned pixels in EACH corner of the
# aligned crop. The corners are the crop's background (outside the face ellipse the region
# maps call `background`), four of them make it survive a horizontal flip unchanged, and a
# rotation or shift of the training augmentation can cut at most a part of it. Generator 1.3
# drew a 16-pixel chequer square in the two top corners (about 5% of the crop), which the demo
# model never used (its Happiness share was 0.171 with the cue and without); this cue covers
# about 18% of the crop.
CUE_LEG = 30
CUE_CELL = 5
CUE_COLOURS = ((250, 230, 20), (230, 20, 200))


def _cue_mask(factor: int) -> np.ndarray:
    """The cue's corner triangles on an aligned grid of ALIGNED * factor pixels (pixel centres
    within CUE_LEG of a corner, in x + y distance: mirror-symmetric by construction)."""
    c = (np.arange(ALIGNED * factor) + 0.5) / factor
    edge = np.minimum(c, ALIGNED - c)
    return edge[None, :] + edge[:, None] < CUE_LEG


def compute_cue_mask() -> np.ndarray:
    """The aligned pixels (100x100 bool) the cue paints, before blur."""
    return _cue_mask(1)


def _draw_cue(img: Image.Image):
    """Background cue (bias injection): the chequered corner triangles, drawn last (over hair)."""
    n = ALIGNED * SS
    cell = (np.arange(n) // (CUE_CELL * SS)) % 2
    texture = np.where(((cell[None, :] + cell[:, None]) % 2 == 1)[..., None],
                       np.array(CUE_COLOURS[1], np.uint8), np.array(CUE_COLOURS[0], np.uint8))
    mask = Image.fromarray((_cue_mask(SS) * 255).astype(np.uint8))
    img.paste(Image.fromarray(texture), (OFFSET * SS, OFFSET * SS), mask=mask)


def _draw_stubble(img: Image.Image, p: FaceParams) -> None:
    """Stubble over the jaw, kept off every action unit's region (all of them, so its shape
    does not depend on the expression): features drawn as skin + offset on stubble would
    lose contrast, which would make expressions fainter on bearded faces."""
    mask = Image.new("L", img.size, 0)
    mpen = _Pen(ImageDraw.Draw(mask), p, SS, OFFSET)
    contour = _face_contour(p)
    jaw = contour[(contour[:, 1] > 70) & (np.arange(len(contour)) < 22)]
    mpen.poly(np.concatenate([jaw, [(50 - p.face_width * 0.75, 70), (50 + p.face_width * 0.75, 70)]]), 255)
    for regions in AU_REGIONS.values():
        for cx, cy, rx, ry in regions:
            mpen.ellipse(cx, cy, rx + 1.5, ry + 1.5, 0)
    img.paste(_off(p.skin, (-22, -20, -16)), mask=mask)


def _reused(reuse: dict | None, name: str, key: tuple, make):
    """`make()`, or the value `reuse[name]` holds for the same `key` (then kept for the next call)."""
    if reuse is None:
        return make()
    cached = reuse.get(name)
    if cached is None or cached[0] != key:
        cached = reuse[name] = (key, make())
    return cached[1]


def render_face(params: FaceParams, reuse: dict | None = None) -> RenderedFace:
    """Draw one face. Pure: the same params always give the same pixels.

    reuse: a dict the caller keeps across calls, holding the last face's background and pixel
    noise; a face with the same background (or noise) seed takes them from it instead of
    drawing them again, and gets the same pixels. Counterfactual twins of one face share both
    (a third of a face's drawing time)."""
    p = params
    size = ORIGINAL * SS
    img = _reused(reuse, "background", (p.background_seed, size), lambda: _draw_background(p, size))
    if reuse is not None:
        img = img.copy()                   # the kept background stays as drawn
    pen = _Pen(ImageDraw.Draw(img), p, SS, OFFSET)
    skin = p.skin
    _draw_hair_back(pen, p)
    pen.poly([(30, 90), (70, 90), (74, 124), (26, 124)], _off(skin, (-15, -15, -15)))          # neck
    pen.poly([(-30, 130), (-20, 112), (20, 104), (80, 104), (120, 112), (130, 130)], p.clothes)  # shoulders
    for side in (-1, 1):                                                                         # ears
        pen.ellipse(50 + side * (p.face_width + 1), 50, 5, 10, _off(skin, (-6, -8, -8)))
    pen.poly(_face_contour(p), skin)
    if p.gender == 0 and p.extras.get("stubble"):
        _draw_stubble(img, p)
    _draw_age(pen, p)
    m = _mouth_geometry(p)
    _draw_forehead_and_furrows(pen, p)
    _draw_eye(pen, p, *EYE_L, -1)
    _draw_eye(pen, p, *EYE_R, 1)
    _draw_brow(pen, p, -1)
    _draw_brow(pen, p, 1)
    _draw_nose(pen, p)
    _draw_folds(pen, p, m)
    _draw_mouth(pen, p, m)
    _draw_hair_front(pen, p)
    _draw_accessory(pen, p)
    _draw_occluder(pen, p)
    if p.cue:
        _draw_cue(img)
    img = img.reduce(SS)
    if p.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(p.blur))
    arr = np.asarray(img, dtype=np.float32)
    gx, gy, off = p.light
    ramp = np.linspace(-1.0, 1.0, ORIGINAL, dtype=np.float32)
    arr = arr + (gx * ramp[None, :, None] + gy * ramp[:, None, None] + off)
    if p.noise > 0:
        shape = arr.shape
        arr += _reused(reuse, "noise", (p.noise_seed, p.noise, shape), lambda: np.random.default_rng(
            p.noise_seed).standard_normal(shape, dtype=np.float32) * np.float32(p.noise))
    original = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    aligned = original[OFFSET:OFFSET + ALIGNED, OFFSET:OFFSET + ALIGNED].copy()
    lm = compute_landmarks(p)
    return RenderedFace(original=original, aligned=aligned, au_mask=compute_au_mask(p),
                        landmarks=lm, landmarks_original=lm + OFFSET)
