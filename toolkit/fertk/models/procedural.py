"""Procedural face model: FACS action units on a parametric face, drawn with tensor ops, no weights.

The embedded default generator of fertk and the test world where the right answer is known. An
identity vector (uniform [0, 1), mapped in-graph to face shape, skin, eyes, brows, nose, mouth,
hair, lighting, pose and capture conditions) and an action-unit vector (intensities in [0, 1])
give an image in [-1, 1]. Shapes are implicit (ellipses, superellipses, parabolic lids, lips and
brows) with a one-pixel linear ramp at every edge, so the output is anti-aliased at any
resolution. The graph is a fixed sequence of tensor ops: no loop over the batch, no
data-dependent control flow; it exports to ONNX (opset 17, dynamic batch).

Where the speed comes from:
- the face is drawn in an axis-aligned, face-centred frame, where a horizontal coordinate is a
  column vector [..., 1, W] and a vertical one a row vector [..., H, 1]: most arithmetic runs on
  those vectors and a shape costs one to three full-size ops; one bilinear grid_sample then
  applies roll, scale and translation to the finished frame;
- features are mirrored (|u - centre|), so one evaluation draws both eyes, brows, ears, nostrils
  and mouth halves;
- brows, eyes, nose, mouth and creases are drawn only inside a static window of the frame that
  bounds them for every identity of the style and every AU vector;
- in `render_expressions` everything that depends only on the identity (background, hair, face
  outline, shading, static shadows, the crease masks AUs deepen) is computed once and shared by
  all of that identity's expressions: the synth pipeline renders each identity under 6 AU vectors.

Framing: "portrait" shows head and shoulders; "face" renders the tight forehead-to-chin crop a
face detector would make (what the paper's FER CNN is fed), directly at full resolution.
Output: RGB [N, 3, H, W] (color=True) or luminance [N, 1, H, W] (color=False), in [-1, 1];
`to_gray01` turns either into the FER CNN's gray [N, 1, H, W] in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fertk.emotions import CONTEMPT, NEUTRAL, normalize_emotion
from fertk.errors import InvalidInputError
from fertk.models._procedural_styles import (
    BACKGROUND_PALETTE,
    CLOTHING_PALETTE,
    HAIR_PALETTE,
    IDENTITY_PARAMS,
    IRIS_PALETTE,
    SKIN_PALETTE,
    STYLE_RANGES,
    STYLES,
)
from fertk.models.registry import ModelCard, register_model

ACTION_UNITS: tuple[str, ...] = (
    "AU1",   # inner brow raiser
    "AU2",   # outer brow raiser
    "AU4",   # brow lowerer (lowers and knits the brows)
    "AU5",   # upper lid raiser
    "AU6",   # cheek raiser (squints from below, crow's feet)
    "AU7",   # lid tightener (raises and straightens the lower lid)
    "AU9",   # nose wrinkler (also raises the upper lip a little)
    "AU10",  # upper lip raiser (lifts the upper lip, bares the upper teeth, deepens the folds)
    "AU12",  # lip corner puller (smile)
    "AU14",  # dimpler, unilateral here (contempt)
    "AU15",  # lip corner depressor
    "AU16",  # lower lip depressor
    "AU20",  # lip stretcher
    "AU23",  # lip tightener
    "AU26",  # jaw drop
)

# EMFACS prototypes (Friesen & Ekman): which AUs make each emotion. Contempt is unilateral 12+14;
# here AU14 is drawn one-sided and carries the whole display.
EMOTION_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "happiness": ("AU6", "AU12"),
    "sadness": ("AU1", "AU4", "AU15"),
    "surprise": ("AU1", "AU2", "AU5", "AU26"),
    "fear": ("AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"),
    "anger": ("AU4", "AU5", "AU7", "AU23"),
    "disgust": ("AU9", "AU10", "AU15", "AU16"),
    CONTEMPT: ("AU14",),
    NEUTRAL: (),
}

_AU = {name: i for i, name in enumerate(ACTION_UNITS)}
_ID = {name: i for i, name in enumerate(IDENTITY_PARAMS)}
IDENTITY_DIM = len(IDENTITY_PARAMS)
AU_DIM = len(ACTION_UNITS)

# Framing: (zoom, face-unit v at the image centre, pose-jitter factor for shift and scale).
# "face" shows v in [-0.5, 0.86] (mid-forehead to below the chin), like a face detector's crop,
# with half the translation/scale jitter (a detector re-centres the face; roll stays).
FRAMINGS: dict[str, tuple[float, float, float]] = {
    "portrait": (1.0, 0.0, 1.0),
    "face": (1.47, 0.18, 0.5),
}

# Luminance weights used when rendering gray (color=False).
_LUMA = (0.299, 0.587, 0.114)
# Fixed seed of the two sensor-noise textures (part of the model definition, not user data).
_NOISE_SEED = 0x5EED_FACE


@dataclass
class ProceduralConfig:
    """Rendering options: output size, colour or gray, capture style."""

    resolution: int = 64     # output side in pixels (square), any size from 16 to 1024
    color: bool = True       # True: [N, 3, H, W] RGB; False: [N, 1, H, W] luminance (3x less work)
    style: str = "studio"    # capture conditions: one of STYLES ("studio", "natural")
    framing: str = "portrait"  # "portrait": head and shoulders; "face": forehead-to-chin crop

    def __post_init__(self) -> None:
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int):
            raise InvalidInputError(f"procedural resolution must be an int, got {self.resolution!r}")
        if not 16 <= self.resolution <= 1024:
            raise InvalidInputError(f"procedural resolution {self.resolution} out of range",
                                    hint="use a size between 16 and 1024 pixels")
        if self.style not in STYLES:
            raise InvalidInputError(f"unknown procedural style {self.style!r}",
                                    hint="choose one of " + ", ".join(STYLES))
        if self.framing not in FRAMINGS:
            raise InvalidInputError(f"unknown procedural framing {self.framing!r}",
                                    hint="choose one of " + ", ".join(FRAMINGS))
        self.color = bool(self.color)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def action_units() -> tuple[str, ...]:
    """Names of the AU vector's columns, in order."""
    return ACTION_UNITS


def identity_params() -> tuple[str, ...]:
    """Names of the identity vector's columns, in order."""
    return IDENTITY_PARAMS


def expression_aus(emotions: Sequence[str], intensity: float | torch.Tensor = 1.0) -> torch.Tensor:
    """EMFACS prototype AU vectors [E, au_dim] for emotion names, scaled by intensity.

    `intensity` is a float or a tensor broadcastable to [..., E] (one value per emotion, or a
    leading batch of them), giving [..., E, au_dim]. Neutral is all zeros.
    """
    if isinstance(emotions, str):
        emotions = [emotions]
    rows = torch.zeros(len(emotions), AU_DIM)
    for row, name in enumerate(emotions):
        canonical = normalize_emotion(name)
        for au in EMOTION_PROTOTYPES[canonical]:
            rows[row, _AU[au]] = 1.0
    scale = torch.as_tensor(intensity, dtype=torch.float32)
    if scale.dim() == 0:
        return rows * scale
    if scale.shape[-1] not in (1, len(emotions)):
        raise InvalidInputError(f"intensity has shape {tuple(scale.shape)}, expected [..., {len(emotions)}]")
    return rows * scale.unsqueeze(-1)


def random_identities(n: int, seed: int = 0) -> torch.Tensor:
    """n identity vectors [n, identity_dim] drawn uniformly from [0, 1) with a seeded generator."""
    if n < 0:
        raise InvalidInputError(f"cannot draw {n} identities")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, IDENTITY_DIM, generator=generator)


def identities_from_seeds(seeds: Sequence[int] | np.ndarray) -> torch.Tensor:
    """One identity vector per integer seed [len(seeds), identity_dim]; same seed, same face.

    A counter-based hash (splitmix64 of seed and column), so it is vectorised, independent of
    batch composition and identical on every platform.
    """
    seeds64 = np.asarray(seeds, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    column = np.arange(IDENTITY_DIM, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        z = seeds64 * np.uint64(0x9E3779B97F4A7C15) + (column + np.uint64(1)) * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    # Top 24 bits -> exactly representable float32 in [0, 1).
    values = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return torch.from_numpy(values)


def to_gray01(images: torch.Tensor) -> torch.Tensor:
    """Model output [N, C, H, W] in [-1, 1] -> gray [N, 1, H, W] in [0, 1] (mean of channels)."""
    return ((images.mean(dim=1, keepdim=True) + 1.0) * 0.5).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Drawing on separable coordinates. The face is drawn in an axis-aligned, face-centred frame, so
# a horizontal coordinate is a column vector [..., 1, W] and a vertical one a row vector
# [..., H, 1]; a shape's terms are computed on those vectors and only their final combination is
# a full [..., H, W] map (one to three full-size ops per shape). Roll, translation and scale are
# applied to the finished frame by one bilinear grid_sample. Lengths are in AA units (pixels
# divided by the edge softness), so coverage of a signed distance d (positive inside) is
# clamp(d + 0.5, 0, 1): a one-pixel ramp at any resolution.


def _ellipse(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Coverage of an axis-aligned ellipse (u: column vector, v: row vector, AA units).

    Uses the first-order distance d = h (1 - q), exact in slope at the boundary, with h half
    the geometric-mean radius; it avoids a full-size sqrt.
    """
    h = 0.5 * torch.sqrt(rx * ry)
    du, dv = (u - cx) / rx, (v - cy) / ry
    return ((0.5 + h) - h * du * du - h * dv * dv).clamp_(0.0, 1.0)


def _squircle(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Coverage of an axis-aligned superellipse |du|^4 + |dv|^4 <= 1 (straight sides, round corners)."""
    h = 0.25 * torch.sqrt(rx * ry)                                                # d = h (1 - q) at the boundary
    du, dv = (u - cx) / rx, (v - cy) / ry
    du, dv = du * du, dv * dv
    return ((0.5 + h) - h * du * du - h * dv * dv).clamp_(0.0, 1.0)


def _blob(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry, weight=1.0) -> torch.Tensor:
    """Soft bump weight * max(1 - q, 0) of an axis-aligned ellipse (for shadows and highlights)."""
    du, dv = (u - cx) / rx, (v - cy) / ry
    return (weight - weight * du * du - weight * dv * dv).clamp_(min=0.0)


def _disc(u: torch.Tensor, v: torch.Tensor, cx, cy, r) -> torch.Tensor:
    """Coverage of a circle of radius r (first-order distance (r^2 - d^2) / 2r)."""
    du, dv = u - cx, v - cy
    inv = 0.5 / r
    return ((0.5 + 0.5 * r) - inv * du * du - inv * dv * dv).clamp_(0.0, 1.0)


def _palette(t: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear palette lookup: t [M] in [0, 1] -> colours [M, C]."""
    k = palette.shape[0]
    knots = torch.arange(k, dtype=t.dtype, device=t.device)
    weights = (1.0 - (t.unsqueeze(-1) * (k - 1) - knots).abs()).clamp(min=0.0)
    return weights @ palette


class ProceduralFaces(nn.Module):
    """Parametric FACS face renderer: (identity [N, identity_dim], au [N, au_dim]) -> [N, C, H, W] in [-1, 1].

    C is 3 when config.color, else 1 (luminance). `render_expressions` is the shared-identity form
    [M, E, C, H, W] used by synthesis (identity-only work done once per identity).
    """

    # Smooth-step masks, lerps and sub-pixel coordinates in float32 throughout; bf16/fp16 would
    # band the shading, and the renderer's cost is elementwise, which low precision barely helps.
    fp32_only = True

    def __init__(self, config: ProceduralConfig | None = None) -> None:
        super().__init__()
        self.config = config or ProceduralConfig()
        self.identity_dim = IDENTITY_DIM          # columns of the identity input
        self.au_dim = AU_DIM                      # columns of the AU input
        self.resolution = self.config.resolution  # output side
        self.channels = 3 if self.config.color else 1
        ranges = STYLE_RANGES[self.config.style]
        lo = torch.tensor([ranges[name][0] for name in IDENTITY_PARAMS], dtype=torch.float32)
        hi = torch.tensor([ranges[name][1] for name in IDENTITY_PARAMS], dtype=torch.float32)
        res = self.config.resolution
        centres = (torch.arange(res, dtype=torch.float32) + 0.5) * (2.0 / res) - 1.0
        to_channels = torch.eye(3) if self.config.color else torch.tensor(_LUMA).view(3, 1)
        generator = torch.Generator().manual_seed(_NOISE_SEED + res)
        noise = torch.randn(2, res, res, generator=generator)
        # Everything is a non-persistent buffer: the model has no weights and an empty state dict.
        buffers = {
            "param_lo": lo,
            "param_span": hi - lo,
            "xs": centres.view(1, 1, 1, res),
            "ys": centres.view(1, 1, res, 1),
            "skin_palette_rgb": torch.tensor(SKIN_PALETTE),
            "warmth_rgb": torch.tensor([0.04, 0.0, -0.06]),
            "lip_tint_rgb": torch.tensor([0.92, 0.62, 0.62]),
            "sclera": torch.tensor([0.86, 0.84, 0.82]) @ to_channels,
            "cavity": torch.tensor([0.28, 0.10, 0.10]) @ to_channels,
            "teeth": torch.tensor([0.93, 0.91, 0.85]) @ to_channels,
            "hair_palette": torch.tensor(HAIR_PALETTE) @ to_channels,
            "iris_palette": torch.tensor(IRIS_PALETTE) @ to_channels,
            "background_palette": torch.tensor(BACKGROUND_PALETTE) @ to_channels,
            "clothing_palette": torch.tensor(CLOTHING_PALETTE) @ to_channels,
            "to_channels": to_channels,
            "luma": torch.tensor(_LUMA).view(3, 1),
            "noise_a": noise[0].view(1, 1, res, res),
            "noise_b": noise[1].view(1, 1, res, res),
            "au_to_mask": _au_mask_weights(),
            "mask_floor": _au_mask_floor(),
            "grid_x": centres.view(1, 1, res, 1),                                # camera grid terms
            "grid_y": centres.view(1, res, 1, 1),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.contiguous(), persistent=False)
        # Rows r0:r1 and columns c0:c1 of the frame that can hold brows, eyes, nose, mouth and
        # creases for any identity of this style and any AU vector (static, so exportable).
        self._zoom, self._centre_v, self._jitter = FRAMINGS[self.config.framing]
        self._window = _feature_window(ranges, res, self._zoom, self._centre_v)

    # -- public API ----------------------------------------------------------------------------

    def forward(self, identity: torch.Tensor, au: torch.Tensor) -> torch.Tensor:
        """Render one face per row: identity [N, identity_dim], au [N, au_dim] -> [N, C, H, W] in [-1, 1]."""
        if identity.dim() != 2 or identity.shape[1] != self.identity_dim:
            raise InvalidInputError(f"identity must be [N, {self.identity_dim}], got {tuple(identity.shape)}")
        if au.dim() != 2 or au.shape[1] != self.au_dim:
            raise InvalidInputError(f"au must be [N, {self.au_dim}], got {tuple(au.shape)}")
        if identity.shape[0] != au.shape[0]:
            raise InvalidInputError(f"identity has {identity.shape[0]} rows but au has {au.shape[0]}")
        images = self._render(identity, au.unsqueeze(1), shared=False)
        return images.reshape(images.shape[0], self.channels, self.resolution, self.resolution)

    def render_expressions(self, identity: torch.Tensor, au: torch.Tensor) -> torch.Tensor:
        """Each identity under each AU vector: identity [M, D], au [E, A] or [M, E, A] -> [M, E, C, H, W].

        Identity-only work (background, hair, outline, shading, crease masks) is done once per
        identity and shared by its E expressions.
        """
        if identity.dim() != 2 or identity.shape[1] != self.identity_dim:
            raise InvalidInputError(f"identity must be [M, {self.identity_dim}], got {tuple(identity.shape)}")
        if au.dim() == 2:
            au = au.unsqueeze(0)
        if au.dim() != 3 or au.shape[2] != self.au_dim:
            raise InvalidInputError(f"au must be [E, {self.au_dim}] or [M, E, {self.au_dim}], got {tuple(au.shape)}")
        if au.shape[0] not in (1, identity.shape[0]):
            raise InvalidInputError(f"au has {au.shape[0]} identity rows, identity has {identity.shape[0]}")
        return self._render(identity, au, shared=True)

    # -- rendering -----------------------------------------------------------------------------

    def _render(self, identity: torch.Tensor, au: torch.Tensor, *, shared: bool) -> torch.Tensor:
        """identity [M, D], au [M or 1, E, A] -> images [M, E, C, H, W].

        `shared` (a static choice, not data) picks how the K crease masks become per-expression
        darkening: True (E expressions share an identity) mixes them with one batched matmul;
        False (one expression per identity) accumulates them directly, with fewer ops.
        """
        res = self.resolution
        params = self.param_lo + self.param_span * identity.to(torch.float32).clamp(0.0, 1.0)
        au = au.to(torch.float32).clamp(0.0, 1.0)

        def p(name: str) -> torch.Tensor:                 # identity scalar [M, 1, 1, 1]
            return params[:, _ID[name]].view(-1, 1, 1, 1)

        def a(name: str) -> torch.Tensor:                 # expression scalar [M|1, E, 1, 1]
            return au[:, :, _AU[name]].unsqueeze(-1).unsqueeze(-1)

        def color(c: torch.Tensor) -> torch.Tensor:       # [M, C] -> [M, 1, C, 1, 1]
            return c.view(c.shape[0], 1, -1, 1, 1)

        # ---- frame coordinates (AA units; 1 face unit = k AA units) --------------------------
        zoom, centre_v = self._zoom, self._centre_v       # framing (static)
        k = (0.5 * res * zoom) / p("blur")
        U = self.xs * (k / zoom)                          # column vector [M, 1, 1, W]
        V = self.ys * (k / zoom) + centre_v * k           # row vector    [M, 1, H, 1]
        yaw = p("yaw")
        fx, fxn = yaw * (0.12 * k), yaw * (0.20 * k)      # inner features / nose tip shift with yaw
        A = (U - fx).abs()                                # mirrored: one evaluation draws both sides
        An = (U - fxn).abs()
        Ua = U.abs()
        side = (fx - U + 0.5).clamp(0.0, 1.0)             # 1 on the subject's right (image left)

        fw, fh = p("face_width") * k, p("face_height") * k
        ew, ex, ey = p("eye_size") * k, p("eye_spacing") * k, p("eye_height") * k
        hu0 = ew * p("eye_openness") * 0.75               # resting upper-lid height above the eye line
        hl0 = ew * p("eye_openness") * 0.70               # resting lower-lid depth below it
        ny = ey + p("nose_length") * k                    # nose tip
        nw = p("nose_width") * k
        my = ny + p("mouth_height") * k                   # lip line
        mw = p("mouth_width") * k
        lip = p("lip_thickness") * k
        by = ey - p("brow_height") * k
        bw, bt = ew * 1.35, p("brow_thickness") * k
        iris_t = p("iris")
        ri = ew * 0.42
        gaze = torch.sin(iris_t * 7.0) * (0.12 * ew)      # gaze varies, decorrelated from iris colour

        # ---- colours [M, C] ------------------------------------------------------------------
        skin_rgb = _palette(params[:, _ID["skin_tone"]], self.skin_palette_rgb)
        skin_rgb = skin_rgb * (1.0 + params[:, _ID["skin_warmth"]].view(-1, 1) * self.warmth_rgb)
        skin = skin_rgb @ self.to_channels
        lip_rgb = skin_rgb * (1.0 - params[:, _ID["lip_color"]].view(-1, 1) * (1.0 - self.lip_tint_rgb)) * 0.85
        lips_c = lip_rgb @ self.to_channels
        hair_c = _palette(params[:, _ID["hair_color"]], self.hair_palette)
        brow_c = torch.minimum(hair_c * 0.6 + skin * 0.15, skin * 0.6)   # brows stay darker than skin
        iris_c = _palette(params[:, _ID["iris"]], self.iris_palette)
        bg_c = _palette(params[:, _ID["background_hue"]], self.background_palette)
        bg_c = bg_c * (params[:, _ID["background_level"]].view(-1, 1) / 0.75)
        cloth_c = _palette(params[:, _ID["clothing"]], self.clothing_palette)

        # ---- identity layers: background, clothing, hair ------------------------------------
        phase = p("noise_phase")                          # also orients the background gradient
        slope = p("background_slope")
        shade_bg = (1.0 + slope * torch.cos(phase) * self.xs) + slope * torch.sin(phase) * self.ys
        img = color(bg_c) * shade_bg.unsqueeze(2)                                   # [M, 1, C, H, W]
        a_cloth = _ellipse(U, V, 0.0, fh + 0.55 * k, 1.35 * k, 0.48 * k)
        img = img.lerp_(color(cloth_c), a_cloth.unsqueeze(2))

        volume = p("hair_volume")
        hair_top = -(fh + (0.06 + 0.16 * volume) * k)
        hair_rx = fw + (0.05 + 0.13 * volume) * k
        hair_len = p("hair_length") * k
        hair_oval = _ellipse(U, V, 0.0, 0.05 * k, hair_rx, 0.05 * k - hair_top)
        # Hair behind the head: the head oval cut at the hair length; long hair also falls
        # straight (a superellipse) from the eyes to the shoulders, a little wider.
        long_hair = ((p("hair_length") - 0.25) / 0.2).clamp(0.0, 1.0)
        cut = (hair_len + 0.5 - V).clamp(0.0, 1.0)                                 # row vector
        fall = _squircle(U, V, 0.0, (hair_len - 0.1 * k) * 0.5, hair_rx + 0.08 * k * long_hair,
                         (hair_len + 0.1 * k) * 0.5).mul_(long_hair)
        a_hair_back = torch.maximum(hair_oval * cut, fall)
        hl = p("hairline") * k
        curve = (hl + 0.02 * k) / (fw * fw)
        hairline = (curve * U + p("hair_part")) * U - hl + 0.5                    # column vector
        a_fringe = (hairline - V).clamp_(0.0, 1.0).mul_(hair_oval)
        a_hair = torch.maximum(a_hair_back, a_fringe)
        strands = 1.0 + 0.07 * torch.sin(U * (41.0 / k) + p("hair_part") * 20.0)   # column vector
        img = img.lerp_(color(hair_c) * strands.unsqueeze(2), a_hair.unsqueeze(2))
        no_fringe = 1.0 - a_fringe

        # ---- skin: neck, ears, face oval (AU26 drops the chin) ------------------------------
        neck = (fw * 0.55 + 0.5 - Ua).clamp(0.0, 1.0) * (V - 0.2 * k + 0.5).clamp(0.0, 1.0)
        ears = _ellipse(Ua, V, fw - 0.015 * k, ey + 0.09 * k, 0.07 * k, 0.13 * k).mul_(1.0 - long_hair)
        body = torch.maximum(neck, ears)

        jaw = p("jaw")
        h_face = 0.5 * torch.sqrt(fw * fh)
        uu = (U / fw) * (U / fw)                                                   # column vector

        def face_oval(vv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(q, coverage) of the face oval given the row term vv = v / half-height."""
            vn = vv.clamp(0.0, 1.0)
            narrowing = 1.0 - jaw * vn * vn                                       # lower face narrows
            q = torch.addcmul(vv * vv, uu, 1.0 / (narrowing * narrowing))
            return q, torch.addcmul(0.5 + h_face, q, h_face, value=-1.0).clamp_(0.0, 1.0)

        vv = V / fh
        q_face, a_face_id = face_oval(vv)
        # Jaw drop lengthens the lower oval; only the chin (a soft central column band) moves, so
        # the jaw angles stay put.
        drop = a("AU26") * 0.10
        _, a_chin = face_oval(vv - V.clamp(min=0.0) / fh * (drop / (1.0 + drop)))  # [M, E, H, W]
        chin_band = ((fw * 0.6 - Ua) / (0.25 * fw)).clamp(0.0, 1.0)
        a_face = torch.maximum(a_chin.mul_(chin_band), a_face_id)
        a_skin = torch.maximum(a_face, body).mul_(no_fringe)
        if shared:
            img = torch.lerp(img, color(skin), a_skin.unsqueeze(2))               # [M, E, C, H, W]
        else:
            img = img.lerp_(color(skin), a_skin.unsqueeze(2))

        # ---- shading: ellipsoid normal, wrapped Lambert ------------------------------------
        lx, ly = p("light_x"), p("light_y")
        lz = torch.sqrt((1.0 - lx * lx - ly * ly).clamp(min=0.05))
        nz = (1.0 - q_face).clamp_(min=0.0).sqrt_()
        lam = ((U * (lx / fw) + 0.35) / 1.35 + V * (ly / fh) / 1.35)
        lam = torch.addcmul(lam, nz, lz / 1.35).clamp_(0.0, 1.0)
        contrast = p("light_contrast")
        head = torch.maximum(torch.maximum(a_face_id, body), a_hair)
        light = torch.addcmul(-2.0 * contrast, lam, 2.5 * contrast).mul_(head).add_(2.0)  # 2 * shade

        # ---- the feature window: everything below lives inside a static box of the frame ----
        r0, r1, c0, c1 = self._window
        Uw, Aw, Anw, sidew = U[..., c0:c1], A[..., c0:c1], An[..., c0:c1], side[..., c0:c1]
        Vw = V[..., r0:r1, :]
        win = img[..., r0:r1, c0:c1].clone()                                      # [M, E, C, h, w]

        # Static shadows (identity only).
        nostrils = _ellipse(Anw, Vw, nw * 0.78, ny + 0.004 * k, 0.024 * k, 0.012 * k)
        fold = self._fold(Aw, Vw, nw, ny, mw, my, k)
        static_dark = _blob(Aw, Vw, ex, ey - 0.25 * ew, 1.6 * ew, 1.15 * ew, 0.12)   # eye sockets
        static_dark += _blob(Anw, Vw, 0.0, ny + 0.028 * k, nw * 1.5, 0.03 * k, 0.30)  # under the nose
        static_dark += _blob(Uw, Vw, fxn - torch.sign(lx) * 0.07 * k, (ey + ny) * 0.5, 0.04 * k,
                             (ny - ey) * 0.55, 0.05 + 0.25 * lx.abs())              # shadow side of the nose
        static_dark += nostrils * 0.55
        static_dark += fold * (0.18 * p("age"))                                     # resting folds

        # Creases the AUs deepen: identity masks mixed by per-expression weights.
        masks = self._crease_masks(Aw, Anw, Uw, Vw, k, fx, ex, ey, ew, hl0, by, ny, nw, my, mw, nostrils,
                                   fold, no_fringe[..., r0:r1, c0:c1])
        # Crease lines only deepen: where AUs cancel (AU1 against AU4 on the glabella) a weight
        # stops at 0 instead of drawing a light line; highlights (negative columns) keep their sign.
        weights = torch.maximum(au @ self.au_to_mask, self.mask_floor)            # [M|1, E, K]
        if shared:
            stacked = torch.cat(masks, dim=1).flatten(2)                           # [M, K, h*w]
            weights = weights.expand(stacked.shape[0], -1, -1)
            dark = torch.bmm(weights, stacked).view(stacked.shape[0], -1, r1 - r0, c1 - c0)
            dark = dark.add_(static_dark)
        else:
            w = weights.unsqueeze(-1).unsqueeze(-1)                                # [M, 1, K, 1, 1]
            dark = static_dark
            for i, mask in enumerate(masks):                                       # fixed K, not batch
                dark = dark.addcmul_(mask, w[:, :, i])

        # ---- brows: a parabola over s in [-1 (inner), 1 (outer)]; AUs move each end ---------
        a1, a2, a4, a5 = a("AU1"), a("AU2"), a("AU4"), a("AU5")
        a6, a7, a9, a12 = a("AU6"), a("AU7"), a("AU9"), a("AU12")
        a14, a15, a16, a20 = a("AU14"), a("AU15"), a("AU16"), a("AU20")
        a10, a23, a26 = a("AU10"), a("AU23"), a("AU26")
        raise_in = (0.09 * a1 + 0.02 * a2 - 0.10 * a4 * (1.0 - 0.5 * a1 * (1.0 - a2)) + 0.03 * a1 * a4 - 0.02 * a9) * k
        raise_out = (0.08 * a2 - 0.04 * a4 - 0.03 * a1 * a4 - 0.015 * a9) * k
        arch = p("brow_arch") * k * (1.0 + 0.8 * a2 - 0.9 * a4)
        s_b = (Aw - (ex + 0.01 * k - 0.04 * k * a4)) / bw                          # [M, E, 1, w]
        brow_v = (by - 0.5 * (raise_in + raise_out)) + arch * (s_b * s_b - 1.0) + 0.5 * (raise_in - raise_out) * s_b
        brow_half = bt * (0.5 - 0.15 * s_b) + 0.5
        brow_ends = (bw * (1.0 - s_b.abs()) + 0.5).clamp(0.0, 1.0)
        a_brow = (brow_half - (Vw - brow_v).abs_()).clamp_(0.0, 1.0).mul_(brow_ends)
        win = win.lerp_(color(brow_c), a_brow.unsqueeze(2))

        # ---- eyes: an opening between two parabolic lids, iris disc, lash line -------------
        # A lowered brow (AU4 without AU1+2 lifting it) presses on the lid fold: AU5 then shows as a
        # glare, not as white above the iris; AU4 alone also lowers the lid (sadness droops).
        brow_low = a4 * (1.0 - 0.5 * a1) * (1.0 - 0.5 * a2)
        droop = 0.8 * a4 * (1.0 - 0.75 * a2)
        # AU5 pulls the upper lid up towards the orbit: by an amount set by the eye's size, not by
        # its resting aperture (narrow-eyed faces open as wide), less where the brow presses down.
        hu = hu0 * (1.0 - 0.1 * a7 - 0.4 * a6 - droop - 0.3 * a9).clamp(min=0.08)
        hu = hu + (0.56 * ew) * a5 * (1.0 - 0.85 * brow_low)
        # The lower lid is pushed up from below by the cheek: AU6, and the bunching of AU9 and AU10.
        hl = hl0 * (1.0 - 0.25 * a7 - 0.5 * a6 - 0.45 * a9 - 0.3 * a10).clamp(min=0.15)
        du = (Aw - ex) / ew
        t_eye = 1.0 - du * du                                                      # column vector
        v_eye = Vw - ey + 0.5                                                      # row vector
        # AU1 without AU2 lifts the inner part of the upper lid with the inner brow (oblique, sad eyes).
        lid_tilt = hu0 * (0.5 * a1 * (1.0 - 0.8 * a2))
        upper = v_eye + (hu - lid_tilt * du) * t_eye                               # > 0 below the upper lid
        lower = (hl * t_eye + 1.0) - v_eye                                         # > 0 above the lower lid
        # The lid parabolas alone would leave a sliver along the eye line beyond the corners
        # when the lids nearly meet (AU6/AU7), so the eye is also limited to |du| < 1.
        eye_cols = (ew * (1.0 - du.abs()) + 0.5).clamp(0.0, 1.0)                  # column vector
        a_eye = upper.clamp(0.0, 1.0).mul_(lower.clamp(0.0, 1.0).mul_(eye_cols))
        win = win.lerp_(color(self.sclera.expand(skin.shape[0], -1)), a_eye.unsqueeze(2))
        iris_x = ex + gaze * (2.0 * sidew - 1.0)
        iris = a_eye * _disc(Aw, Vw, iris_x, ey + 0.1 * ew, ri)
        win = win.lerp_(color(iris_c), iris.unsqueeze(2))
        pupil = _disc(Aw, Vw, iris_x, ey + 0.1 * ew, ri * 0.45)
        lash_cols = (ew * (1.05 - du.abs()) + 0.5).clamp(0.0, 1.0)
        lash = upper.add_(0.9 + 0.05 * ew).clamp_(0.0, 1.0).mul_(lower.add_(0.6).clamp_(0.0, 1.0))
        lash = lash.mul_(lash_cols).sub_(a_eye).clamp_(min=0.0)

        # ---- mouth: lip line mid(s) = my + c s^2 + d s^4 - lift (1 - s^2), opening and lips around it
        # (a smile curves the whole line, s^2; AU15/AU20 pull only the corners down, s^4)
        mw_e = mw * (1.0 + 0.30 * a12 + 0.5 * a20 - 0.15 * a23 - 0.12 * a26 + 0.04 * a16 - 0.15 * a15)
        corner = (0.01 * a16 - 0.12 * a12) * k
        corner_dn = (0.075 * a15 + 0.05 * a20) * k
        lift = 0.06 * k * a9
        gap = (0.20 * a26 * (1.0 - 0.8 * a20) + 0.085 * a12 + 0.06 * a16 + 0.025 * a20 + 0.03 * a9) * k
        square = (0.7 * a20 + 0.3 * a12).clamp(max=1.0)
        thin = (1.0 - 0.55 * a23 - 0.3 * a20 - 0.25 * a12).clamp(min=0.2)
        ut, lt = lip * 0.8 * thin * (1.0 - 0.35 * a10), lip * thin * (1.0 + 0.25 * a16 + 0.3 * a15)
        s_m = Aw / mw_e                                                            # [M, E, 1, w]
        t_m = 1.0 - s_m * s_m
        tc = t_m.clamp(min=0.0)
        tl = tc.sqrt()                                                             # lip fullness profile
        # AU10 lifts the upper lip in a squared arch (the tl profile) off the lower lip, which
        # stays: the opening grows by the same amount and bares the upper teeth.
        raise_10 = (0.05 * k * a10) * tl
        g = gap * ((1.0 - square) * tc + square * tl) + raise_10                   # opening profile
        s2 = (1.0 - t_m).clamp(max=2.0)
        bend = (corner + lift) * t_m - corner_dn * s2 * s2 + 0.035 * k * a14 * sidew * s2 + raise_10
        rel = (Vw - my - corner + 0.5) + bend                                     # (v - mid) + 0.5
        # Each lip edge is pulled in by half an AA unit so the two ramps cannot overlap (and
        # leave a faint line) where the lip thickness is zero beyond the corners.
        lip_bottom = g + lt * tl + 0.5
        a_lip_bot = (lip_bottom - rel).clamp_(0.0, 1.0)
        a_lips = (rel + (ut * tl - 0.5)).clamp_(0.0, 1.0).mul_(a_lip_bot)
        win = win.lerp_(color(lips_c), a_lips.unsqueeze(2))
        a_cav = (rel - 0.5).clamp_(0.0, 1.0).mul_((g + 0.5 - rel).clamp_(0.0, 1.0))
        win = win.lerp_(color(self.cavity.expand(skin.shape[0], -1)), a_cav.unsqueeze(2))
        upper_teeth = (0.045 * k * (1.0 - 0.6 * a20) + 1.0 - rel).clamp_(0.0, 1.0)
        lower_teeth = (rel + (0.035 * k - g)).clamp_(0.0, 1.0).mul_((a16 + 0.6 * a20 + 0.3 * a26).clamp(max=1.0) * 0.8)
        teeth = torch.maximum(upper_teeth, lower_teeth).mul_(a_cav)
        win = win.lerp_(color(self.teeth.expand(skin.shape[0], -1)), teeth.unsqueeze(2))
        lip_line = ((0.004 * k).clamp(min=0.25) + 1.0 - (rel - 0.5).abs_()).clamp_(0.0, 1.0)
        lip_shadow = (lip_bottom + 0.06 * k - rel).clamp_(0.0, 1.0).sub_(a_lip_bot)

        # ---- lines and shadows darken the window; light, noise and camera the whole frame ---
        dark = dark.add_(lash, alpha=0.75)
        dark = dark.addcmul_(pupil, a_eye, value=0.7)
        # AU23 thins and rolls in the lips: the line where they meet gets finer.
        dark = dark.addcmul_(lip_line, tl * (0.45 - 0.2 * a23)).addcmul_(lip_shadow, tl * 0.25)
        win = win.mul_(dark.mul_(-1.0).add_(1.0).unsqueeze(2))
        # Put the window back by concatenation (exports as Slice/Concat; a slice assignment
        # becomes a ScatterND with a per-element index tensor, slow in ONNX Runtime).
        middle = torch.cat([img[..., r0:r1, :c0], win, img[..., r0:r1, c1:]], dim=-1)
        img = torch.cat([img[..., :r0, :], middle, img[..., r1:, :]], dim=-2)
        # Auto exposure, as a camera metering on the face: a dark face is exposed up (partially,
        # and never down), so its shadows and creases keep some contrast; the background may clip.
        exposure = (0.5 / (skin_rgb @ self.luma).clamp(min=0.05)).pow(0.75).clamp(1.0, 2.0)
        light = light.mul_(exposure.view(-1, 1, 1, 1))
        frame = img.mul_(light.unsqueeze(2)).sub_(1.0)                            # [-1, 1] (before noise)
        jitter = self._jitter                             # a face crop is re-centred, as by a detector
        image = self._camera(frame, p("roll"), p("shift_x") * jitter, p("shift_y") * jitter,
                             1.0 + (p("scale") - 1.0) * jitter)
        # Sensor noise is added in image coordinates, after the camera, so the border padding of
        # the camera never smears it.
        noise = (torch.cos(phase) * p("noise")) * self.noise_a + (torch.sin(phase) * p("noise")) * self.noise_b
        return image.add_((2.0 * noise).unsqueeze(2)).clamp_(-1.0, 1.0)

    def _camera(self, frame: torch.Tensor, roll, shift_x, shift_y, scale) -> torch.Tensor:
        """Place the face-centred frame [M, E, C, H, W] in the image: rotate, scale, translate.

        Output pixel x samples the frame at R(roll) (x - shift) / scale (bilinear, border).
        """
        m, e, c, h, w = frame.shape
        cos, sin = torch.cos(roll) / scale, torch.sin(roll) / scale               # [M, 1, 1, 1]
        # grid[..., :] = x * (cos, -sin) + y * (sin, cos) + offset, built in [M, H, W, 2] layout
        # from a column term and a row term (one full-size op, no interleaving copy).
        along_x = torch.cat([cos, -sin], dim=-1)                                   # [M, 1, 1, 2]
        along_y = torch.cat([sin, cos], dim=-1)
        offset = -(shift_x * along_x + shift_y * along_y)
        column = self.grid_x * along_x + offset                                    # [M, 1, W, 2]
        row = self.grid_y * along_y                                                # [M, H, 1, 2]
        grid = (column.unsqueeze(1) + row.unsqueeze(1)).expand(-1, e, -1, -1, -1).reshape(m * e, h, w, 2)
        out = nn.functional.grid_sample(frame.reshape(m * e, c, h, w), grid, mode="bilinear",
                                        padding_mode="border", align_corners=False)
        return out.view(m, e, c, h, w)

    @staticmethod
    def _fold(A, V, nw, ny, mw, my, k) -> torch.Tensor:
        """Nasolabial fold: a soft crease from the nose wing curving out past the mouth corner."""
        v0, v1 = ny - 0.01 * k, my + 0.06 * k
        t = ((V - v0) / (v1 - v0)).clamp(0.0, 1.0).sqrt()                         # row vector
        fold_u = nw * 1.7 + (mw + 0.07 * k - nw * 1.7) * t
        on = (V - v0 + 0.5).clamp(0.0, 1.0) * (v1 - V + 0.5).clamp(0.0, 1.0)
        inv_width = 1.0 / (0.016 * k).clamp(min=0.8)
        return (1.0 - (A - fold_u).abs_().mul_(inv_width)).clamp_(min=0.0).mul_(on)

    @staticmethod
    def _crease_masks(A, An, U, V, k, fx, ex, ey, ew, hl0, by, ny, nw, my, mw, nostrils, fold,
                      no_fringe) -> list[torch.Tensor]:
        """Identity masks [M, 1, H, W] that AUs deepen, in the column order of `_au_mask_weights`."""
        two_pi = 2.0 * math.pi

        def ridge(d: torch.Tensor, half_width) -> torch.Tensor:
            return (1.0 - d.abs() / half_width).clamp(min=0.0)

        forehead_lines = (torch.cos((V - by) * (two_pi / (0.055 * k))) - 0.2).clamp(min=0.0)   # row
        crows_lines = torch.cos((V - ey) * (two_pi / (0.045 * k))) * 0.5 + 0.5                  # row
        nose_lines = torch.cos((V - ey) * (two_pi / (0.05 * k))) * 0.5 + 0.5                  # row
        glabella_line = ridge(A - 0.035 * k, (0.008 * k).clamp(min=0.6))                       # column
        bulge_line = ridge(V - (ey + hl0 + 0.035 * k), (0.01 * k).clamp(min=0.6))              # row
        cheek = _blob(A, V, ex + 0.03 * k, ey + 0.16 * k, 0.11 * k, 0.08 * k)
        flare = _ellipse(An, V, nw * 0.92, ny - 0.012 * k, 0.030 * k, 0.015 * k)
        return [
            _blob(A, V, 0.035 * k, by + 0.01 * k, 0.05 * k, 0.06 * k).mul_(glabella_line),     # glabella
            _blob(A, V, 0.0, by - 0.14 * k, 0.32 * k, 0.11 * k).mul_(forehead_lines).mul_(no_fringe),
            _blob(A, V, 0.0, by - 0.12 * k, 0.15 * k, 0.10 * k).mul_(forehead_lines).mul_(no_fringe),  # mid (AU1)
            _blob(A, V, ex, ey - 0.3 * ew, 1.3 * ew, 0.9 * ew),                                # brow shadow
            _blob(A, V, ex + ew * 1.25, ey + 0.01 * k, 0.05 * k, 0.05 * k).mul_(crows_lines),  # crow's feet
            fold,                                                                               # nasolabial
            cheek.mul_(cheek),                                                                  # cheek highlight
            _blob(A, V, ex, ey + hl0, ew * 1.1, 0.08 * k).mul_(bulge_line),                     # lower-lid bulge
            _blob(An, V, 0.0, ey + 0.06 * k, nw * 1.3, 0.075 * k).mul_(nose_lines),              # nose wrinkles
            flare.sub_(nostrils),                                                               # nostril flare
            _blob(U, V, fx - mw * 1.08, my - 0.005 * k, 0.028 * k, 0.03 * k),                  # AU14 dimple
        ]


def _feature_window(ranges: dict[str, tuple[float, float]], res: int, zoom: float = 1.0,
                    centre_v: float = 0.0) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the frame box that bounds every feature for parameters within `ranges`.

    Bounds in face units (the frame's unit) from the extreme parameter values and the largest AU
    displacements in `_render`, plus a margin for edge ramps and crease widths. Tested against a
    full-frame render at the corners of the parameter box.
    """
    hi = {name: r[1] for name, r in ranges.items()}
    lo = {name: r[0] for name, r in ranges.items()}
    yaw = max(abs(lo["yaw"]), abs(hi["yaw"]))
    top = lo["eye_height"] - hi["brow_height"] - 0.26                  # forehead-line mask top
    mouth = hi["eye_height"] + hi["nose_length"] + hi["mouth_height"]
    bottom = mouth + 0.20 + 1.25 * hi["lip_thickness"] + 0.07          # jaw drop, lower lip, shadow
    half_width = max(
        hi["eye_spacing"] + 1.6 * hi["eye_size"] + 0.12 * yaw,          # eye sockets, brows
        hi["eye_spacing"] + 1.25 * hi["eye_size"] + 0.05 + 0.12 * yaw,  # crow's feet
        hi["eye_spacing"] + 0.14 + 0.12 * yaw,                         # cheeks
        1.6 * hi["mouth_width"] + hi["lip_thickness"] + 0.12 * yaw,    # widest mouth
        0.11 + 0.20 * yaw,                                             # nose-side shadow
    )
    margin = 1.0 + hi["blur"]                                          # pixels: edge ramps
    half = res / 2.0                                                    # frame y = (v - centre_v) * zoom
    r0 = max(0, math.floor(((top - centre_v) * zoom + 1.0) * half - margin))
    r1 = min(res, math.ceil(((bottom - centre_v) * zoom + 1.0) * half + margin))
    c0 = max(0, math.floor((1.0 - half_width * zoom) * half - margin))
    return r0, r1, c0, res - c0


def _au_mask_weights() -> torch.Tensor:
    """[au_dim, K]: how strongly each AU deepens each crease mask (column order of `_crease_masks`)."""
    w = torch.zeros(AU_DIM, 11)
    glabella, forehead, forehead_mid, brow_shadow, crows, fold, cheek, bulge, nose, flare, dimple = range(11)
    w[_AU["AU4"], glabella] = 0.6
    w[_AU["AU9"], glabella] = 0.2
    w[_AU["AU1"], glabella] = -0.4
    w[_AU["AU1"], forehead] = 0.05
    w[_AU["AU1"], forehead_mid] = 0.1
    w[_AU["AU2"], forehead] = 0.15
    w[_AU["AU4"], forehead_mid] = -0.1
    w[_AU["AU4"], brow_shadow] = 0.5
    w[_AU["AU9"], brow_shadow] = 0.1
    w[_AU["AU1"], brow_shadow] = -0.08
    w[_AU["AU2"], brow_shadow] = -0.08
    w[_AU["AU6"], crows] = 0.2
    w[_AU["AU6"], fold] = 0.08
    w[_AU["AU12"], fold] = 0.16
    w[_AU["AU9"], fold] = 0.28
    w[_AU["AU10"], fold] = 0.2
    w[_AU["AU6"], cheek] = -0.07
    w[_AU["AU12"], cheek] = -0.04
    w[_AU["AU10"], cheek] = -0.05
    w[_AU["AU6"], bulge] = 0.25
    w[_AU["AU10"], bulge] = 0.15
    w[_AU["AU7"], bulge] = 0.15
    w[_AU["AU9"], nose] = 0.6
    w[_AU["AU9"], flare] = 0.55
    w[_AU["AU14"], dimple] = 0.45
    return w


def _au_mask_floor() -> torch.Tensor:
    """[K]: the lowest mixed weight of each crease mask (0 for lines, which cannot turn into highlights)."""
    floor = torch.full((11,), -1.0)
    floor[0] = 0.0                                   # glabella lines (column order of `_crease_masks`)
    floor[2] = 0.0                                   # mid-forehead lines
    return floor


def procedural_card(model: ProceduralFaces) -> ModelCard:
    """The card describing a procedural face model (config, I/O columns, emotion prototypes)."""
    cfg = model.config
    return ModelCard(
        name="procedural",
        architecture="ProceduralFaces",
        config=cfg.to_dict(),
        weights_sha256=None,
        source="procedural",
        inputs=[
            {"name": "identity", "dtype": "float32", "shape": ["batch", IDENTITY_DIM], "range": [0.0, 1.0],
             "columns": list(IDENTITY_PARAMS)},
            {"name": "au", "dtype": "float32", "shape": ["batch", AU_DIM], "range": [0.0, 1.0],
             "columns": list(ACTION_UNITS)},
        ],
        outputs=[{"name": "image", "dtype": "float32",
                  "shape": ["batch", model.channels, cfg.resolution, cfg.resolution], "range": [-1.0, 1.0],
                  "channels": "rgb" if cfg.color else "luminance"}],
        extra={"emotion_prototypes": {name: list(aus) for name, aus in EMOTION_PROTOTYPES.items()}},
    )


@register_model("procedural", description="Procedural FACS face model: identity + action units -> face (no weights)",
                task="generator", default_config=ProceduralConfig().to_dict())
def build_procedural(weights: Path | None = None, **config: Any) -> tuple[ProceduralFaces, ModelCard]:
    """Registry builder: the procedural model from config overrides; it has no weights."""
    if weights is not None:
        raise InvalidInputError(f"the procedural face model has no weights, got {weights}",
                                hint="build it with weights=None (no --weights)")
    known = set(ProceduralConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise InvalidInputError(f"unknown procedural config option(s): {', '.join(unknown)}",
                                hint="known options: " + ", ".join(sorted(known)))
    model = ProceduralFaces(ProceduralConfig(**config)).eval()
    return model, procedural_card(model)
