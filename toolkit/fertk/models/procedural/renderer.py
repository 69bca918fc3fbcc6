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

Framing: "portrait" shows head and shoulders; "face" renders the box a face detector (OpenCV's
Haar cascade) draws, brows to chin (what the paper's FER CNN is fed), directly at full resolution.
Output: RGB [N, 3, H, W] (color=True) or luminance [N, 1, H, W] (color=False), in [-1, 1];
`to_gray01` turns either into the FER CNN's gray [N, 1, H, W] in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from fertk.core.errors import InvalidInputError
from fertk.models.procedural.aus import ACTION_UNITS, AU_DIM, au_mask_floor, au_mask_weights
from fertk.models.procedural.config import IDENTITY_INDEX, FRAMINGS, IDENTITY_DIM, ProceduralConfig, feature_window
from fertk.models.procedural.draw import draw_blob, crease_masks, draw_disc, draw_ellipse, draw_fold, palette_lookup, draw_squircle
from fertk.models.procedural.styles import (
    BACKGROUND_PALETTE,
    CLOTHING_PALETTE,
    HAIR_PALETTE,
    IDENTITY_PARAMS,
    IRIS_PALETTE,
    SKIN_PALETTE,
    STYLE_RANGES,
)

# Luminance weights used when rendering gray (color=False).
_LUMA = (0.299, 0.587, 0.114)
# Fixed seed of the two sensor-noise textures (part of the model definition, not user data).
_NOISE_SEED = 0x5EED_FACE

Tensor = torch.Tensor


class _Params:
    """Identity parameters [M, D] in face units; `p(name)` is one as a scalar map [M, 1, 1, 1]."""

    def __init__(self, values: Tensor) -> None:
        self.values = values

    def __call__(self, name: str) -> Tensor:
        return self.values[:, IDENTITY_INDEX[name]].view(-1, 1, 1, 1)

    def column(self, name: str) -> Tensor:
        """One parameter as [M]."""
        return self.values[:, IDENTITY_INDEX[name]]


@dataclass
class _Geometry:
    """Frame coordinates and feature positions of a batch of identities, in AA units.

    U, A (|U - fx|), An (|U - fxn|), Ua (|U|) and side are column vectors [M, 1, 1, W]; V is a row
    vector [M, 1, H, 1]; the rest are scalar maps [M, 1, 1, 1]. `window` slices the coordinates.
    """

    k: Tensor       # AA units per face unit
    U: Tensor
    V: Tensor
    A: Tensor
    An: Tensor
    Ua: Tensor
    side: Tensor    # 1 on the subject's right (image left)
    fx: Tensor      # inner-feature shift with yaw
    fxn: Tensor     # nose-tip shift with yaw
    fw: Tensor      # face half-width / half-height
    fh: Tensor
    ew: Tensor      # eye half-width, spacing, height
    ex: Tensor
    ey: Tensor
    hu0: Tensor     # resting upper-lid height above the eye line / lower-lid depth below it
    hl0: Tensor
    ny: Tensor      # nose tip, nostril half-spacing
    nw: Tensor
    my: Tensor      # lip line, mouth half-width, lip thickness
    mw: Tensor
    lip: Tensor
    by: Tensor      # brow line, half-length, thickness
    bw: Tensor
    bt: Tensor
    ri: Tensor      # iris radius
    gaze: Tensor    # horizontal gaze offset

    def window(self, r0: int, r1: int, c0: int, c1: int) -> "_Geometry":
        """The same geometry with coordinates cut to rows r0:r1 and columns c0:c1."""
        return replace(self, U=self.U[..., c0:c1], A=self.A[..., c0:c1], An=self.An[..., c0:c1],
                       Ua=self.Ua[..., c0:c1], side=self.side[..., c0:c1], V=self.V[..., r0:r1, :])


@dataclass
class _Colours:
    """An identity's colours, [M, C] in the output channels (skin also [M, 3] RGB)."""

    skin_rgb: Tensor
    skin: Tensor
    lips: Tensor
    hair: Tensor
    brow: Tensor
    iris: Tensor
    background: Tensor
    clothing: Tensor


def _bcast(c: Tensor) -> Tensor:
    """[M, C] -> [M, 1, C, 1, 1]."""
    return c.view(c.shape[0], 1, -1, 1, 1)


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
            "au_to_mask": au_mask_weights(),
            "mask_floor": au_mask_floor(),
            "grid_x": centres.view(1, 1, res, 1),                                # camera grid terms
            "grid_y": centres.view(1, res, 1, 1),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.contiguous(), persistent=False)
        # Rows r0:r1 and columns c0:c1 of the frame that can hold brows, eyes, nose, mouth and
        # creases for any identity of this style and any AU vector (static, so exportable).
        self._zoom, self._centre_v, self._jitter = FRAMINGS[self.config.framing]
        self._window = feature_window(ranges, res, self._zoom, self._centre_v)

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
        p = _Params(self.param_lo + self.param_span * identity.to(torch.float32).clamp(0.0, 1.0))
        au = au.to(torch.float32).clamp(0.0, 1.0)
        x = {name: au[:, :, i].unsqueeze(-1).unsqueeze(-1) for i, name in enumerate(ACTION_UNITS)}
        g = self._geometry(p)
        c = self._colours(p)
        img, a_hair, no_fringe, long_hair = self._background_and_hair(p, g, c)
        img, q_face, a_face_id, body = self._skin(img, p, g, c, x, no_fringe, long_hair, shared)
        light = self._shading(p, g, q_face, torch.maximum(torch.maximum(a_face_id, body), a_hair))

        # The feature window: everything below lives inside a static box of the frame.
        r0, r1, c0, c1 = self._window
        w = g.window(r0, r1, c0, c1)
        win = img[..., r0:r1, c0:c1].clone()                                      # [M, E, C, h, w]
        dark = self._creases(p, w, au, no_fringe[..., r0:r1, c0:c1], shared)
        win = self._brows(win, p, w, c, x)
        win, lash, pupil, a_eye = self._eyes(win, w, c, x)
        win, lip_line, lip_shadow, tl = self._mouth(win, w, c, x)

        # Lines and shadows darken the window; light, noise and camera the whole frame.
        dark = dark.add_(lash, alpha=0.75)
        dark = dark.addcmul_(pupil, a_eye, value=0.7)
        # AU23 thins and rolls in the lips: the line where they meet gets finer.
        # AU16 pulls the lower lip down and turns it out: the skin under it bunches into a deeper
        # furrow above the chin.
        dark = dark.addcmul_(lip_line, tl * (0.45 - 0.2 * x["AU23"]))
        dark = dark.addcmul_(lip_shadow, tl * (0.25 + 0.6 * x["AU16"]))
        win = win.mul_(dark.mul_(-1.0).add_(1.0).unsqueeze(2))
        # Put the window back by concatenation (exports as Slice/Concat; a slice assignment
        # becomes a ScatterND with a per-element index tensor, slow in ONNX Runtime).
        middle = torch.cat([img[..., r0:r1, :c0], win, img[..., r0:r1, c1:]], dim=-1)
        img = torch.cat([img[..., :r0, :], middle, img[..., r1:, :]], dim=-2)
        return self._expose(img, light, p, c)

    def _geometry(self, p: "_Params") -> "_Geometry":
        """Frame coordinates and the identity's feature positions (AA units; 1 face unit = k AA units)."""
        zoom, centre_v = self._zoom, self._centre_v       # framing (static)
        k = (0.5 * self.resolution * zoom) / p("blur")
        U = self.xs * (k / zoom)                          # column vector [M, 1, 1, W]
        V = self.ys * (k / zoom) + centre_v * k           # row vector    [M, 1, H, 1]
        yaw = p("yaw")
        fx, fxn = yaw * (0.12 * k), yaw * (0.20 * k)      # inner features / nose tip shift with yaw
        ew, ey = p("eye_size") * k, p("eye_height") * k
        ny = ey + p("nose_length") * k                    # nose tip
        return _Geometry(
            k=k, U=U, V=V, fx=fx, fxn=fxn,
            A=(U - fx).abs(),                             # mirrored: one evaluation draws both sides
            An=(U - fxn).abs(),
            Ua=U.abs(),
            side=(fx - U + 0.5).clamp(0.0, 1.0),          # 1 on the subject's right (image left)
            fw=p("face_width") * k, fh=p("face_height") * k,
            ew=ew, ex=p("eye_spacing") * k, ey=ey,
            hu0=ew * p("eye_openness") * 0.75,            # resting upper-lid height above the eye line
            hl0=ew * p("eye_openness") * 0.70,            # resting lower-lid depth below it
            ny=ny, nw=p("nose_width") * k,
            my=ny + p("mouth_height") * k,                # lip line
            mw=p("mouth_width") * k,
            lip=p("lip_thickness") * k,
            by=ey - p("brow_height") * k,
            bw=ew * 1.35, bt=p("brow_thickness") * k,
            ri=ew * 0.42,
            gaze=torch.sin(p("iris") * 7.0) * (0.12 * ew),  # gaze varies, decorrelated from iris colour
        )

    def _colours(self, p: "_Params") -> "_Colours":
        """The identity's colours [M, C] (skin also as RGB [M, 3], for exposure)."""
        skin_rgb = palette_lookup(p.column("skin_tone"), self.skin_palette_rgb)
        skin_rgb = skin_rgb * (1.0 + p.column("skin_warmth").view(-1, 1) * self.warmth_rgb)
        skin = skin_rgb @ self.to_channels
        lip_rgb = skin_rgb * (1.0 - p.column("lip_color").view(-1, 1) * (1.0 - self.lip_tint_rgb)) * 0.85
        hair = palette_lookup(p.column("hair_color"), self.hair_palette)
        background = palette_lookup(p.column("background_hue"), self.background_palette)
        return _Colours(
            skin_rgb=skin_rgb, skin=skin, lips=lip_rgb @ self.to_channels, hair=hair,
            brow=torch.minimum(hair * 0.6 + skin * 0.15, skin * 0.6),   # brows stay darker than skin
            iris=palette_lookup(p.column("iris"), self.iris_palette),
            background=background * (p.column("background_level").view(-1, 1) / 0.75),
            clothing=palette_lookup(p.column("clothing"), self.clothing_palette),
        )

    def _background_and_hair(self, p: "_Params", g: "_Geometry", c: "_Colours"):
        """Background, clothing and hair [M, 1, C, H, W]; also the hair and fringe coverage."""
        U, V, k = g.U, g.V, g.k
        phase = p("noise_phase")                          # also orients the background gradient
        slope = p("background_slope")
        shade_bg = (1.0 + slope * torch.cos(phase) * self.xs) + slope * torch.sin(phase) * self.ys
        img = _bcast(c.background) * shade_bg.unsqueeze(2)                          # [M, 1, C, H, W]
        a_cloth = draw_ellipse(U, V, 0.0, g.fh + 0.55 * k, 1.35 * k, 0.48 * k)
        img = img.lerp_(_bcast(c.clothing), a_cloth.unsqueeze(2))

        volume = p("hair_volume")
        hair_top = -(g.fh + (0.06 + 0.16 * volume) * k)
        hair_rx = g.fw + (0.05 + 0.13 * volume) * k
        hair_len = p("hair_length") * k
        hair_oval = draw_ellipse(U, V, 0.0, 0.05 * k, hair_rx, 0.05 * k - hair_top)
        # Hair behind the head: the head oval cut at the hair length; long hair also falls
        # straight (a superellipse) from the eyes to the shoulders, a little wider.
        long_hair = ((p("hair_length") - 0.25) / 0.2).clamp(0.0, 1.0)
        cut = (hair_len + 0.5 - V).clamp(0.0, 1.0)                                 # row vector
        fall = draw_squircle(U, V, 0.0, (hair_len - 0.1 * k) * 0.5, hair_rx + 0.08 * k * long_hair,
                         (hair_len + 0.1 * k) * 0.5).mul_(long_hair)
        a_hair_back = torch.maximum(hair_oval * cut, fall)
        hl = p("hairline") * k
        curve = (hl + 0.02 * k) / (g.fw * g.fw)
        hairline = (curve * U + p("hair_part")) * U - hl + 0.5                    # column vector
        a_fringe = (hairline - V).clamp_(0.0, 1.0).mul_(hair_oval)
        a_hair = torch.maximum(a_hair_back, a_fringe)
        strands = 1.0 + 0.07 * torch.sin(U * (41.0 / k) + p("hair_part") * 20.0)   # column vector
        img = img.lerp_(_bcast(c.hair) * strands.unsqueeze(2), a_hair.unsqueeze(2))
        return img, a_hair, 1.0 - a_fringe, long_hair

    def _skin(self, img, p: "_Params", g: "_Geometry", c: "_Colours", x, no_fringe, long_hair, shared: bool):
        """Neck, ears and face oval (AU26 drops the chin): (image, face q, face coverage, neck + ears)."""
        U, V, Ua, k, fw, fh = g.U, g.V, g.Ua, g.k, g.fw, g.fh
        neck = (fw * 0.55 + 0.5 - Ua).clamp(0.0, 1.0) * (V - 0.2 * k + 0.5).clamp(0.0, 1.0)
        ears = draw_ellipse(Ua, V, fw - 0.015 * k, g.ey + 0.09 * k, 0.07 * k, 0.13 * k).mul_(1.0 - long_hair)
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
        drop = x["AU26"] * 0.10
        _, a_chin = face_oval(vv - V.clamp(min=0.0) / fh * (drop / (1.0 + drop)))  # [M, E, H, W]
        chin_band = ((fw * 0.6 - Ua) / (0.25 * fw)).clamp(0.0, 1.0)
        a_face = torch.maximum(a_chin.mul_(chin_band), a_face_id)
        a_skin = torch.maximum(a_face, body).mul_(no_fringe)
        if shared:
            img = torch.lerp(img, _bcast(c.skin), a_skin.unsqueeze(2))             # [M, E, C, H, W]
        else:
            img = img.lerp_(_bcast(c.skin), a_skin.unsqueeze(2))
        return img, q_face, a_face_id, body

    def _shading(self, p: "_Params", g: "_Geometry", q_face, head) -> torch.Tensor:
        """2 x shade [M, 1, H, W]: ellipsoid normal, wrapped Lambert, on the head (`head` coverage)."""
        lx, ly = p("light_x"), p("light_y")
        lz = torch.sqrt((1.0 - lx * lx - ly * ly).clamp(min=0.05))
        nz = (1.0 - q_face).clamp_(min=0.0).sqrt_()
        lam = ((g.U * (lx / g.fw) + 0.35) / 1.35 + g.V * (ly / g.fh) / 1.35)
        lam = torch.addcmul(lam, nz, lz / 1.35).clamp_(0.0, 1.0)
        contrast = p("light_contrast")
        return torch.addcmul(-2.0 * contrast, lam, 2.5 * contrast).mul_(head).add_(2.0)

    def _creases(self, p: "_Params", w: "_Geometry", au, no_fringe, shared: bool) -> torch.Tensor:
        """Darkening of the window [M, E, h, w]: static shadows plus the crease masks AUs deepen."""
        A, An, U, V, k = w.A, w.An, w.U, w.V, w.k
        ex, ey, ew, ny, nw = w.ex, w.ey, w.ew, w.ny, w.nw
        lx = p("light_x")
        nostrils = draw_ellipse(An, V, nw * 0.78, ny + 0.004 * k, 0.024 * k, 0.012 * k)
        fold = draw_fold(A, V, nw, ny, w.mw, w.my, k)
        static_dark = draw_blob(A, V, ex, ey - 0.25 * ew, 1.6 * ew, 1.15 * ew, 0.12)   # eye sockets
        static_dark += draw_blob(An, V, 0.0, ny + 0.028 * k, nw * 1.5, 0.03 * k, 0.30)  # under the nose
        static_dark += draw_blob(U, V, w.fxn - torch.sign(lx) * 0.07 * k, (ey + ny) * 0.5, 0.04 * k,
                             (ny - ey) * 0.55, 0.05 + 0.25 * lx.abs())             # shadow side of the nose
        static_dark += nostrils * 0.55
        static_dark += fold * (0.18 * p("age"))                                     # resting folds

        # Creases the AUs deepen: identity masks mixed by per-expression weights.
        masks = crease_masks(A, An, U, V, k, w.fx, ex, ey, ew, w.hl0, w.by, ny, nw, w.my, w.mw, nostrils,
                              fold, no_fringe)
        # Crease lines only deepen: where AUs cancel (AU1 against AU4 on the glabella) a weight
        # stops at 0 instead of drawing a light line; highlights (negative columns) keep their sign.
        weights = torch.maximum(au @ self.au_to_mask, self.mask_floor)            # [M|1, E, K]
        if shared:
            stacked = torch.cat(masks, dim=1).flatten(2)                           # [M, K, h*w]
            weights = weights.expand(stacked.shape[0], -1, -1)
            h, wd = V.shape[-2], U.shape[-1]
            dark = torch.bmm(weights, stacked).view(stacked.shape[0], -1, h, wd)
            return dark.add_(static_dark)
        mix = weights.unsqueeze(-1).unsqueeze(-1)                                  # [M, 1, K, 1, 1]
        dark = static_dark
        for i, mask in enumerate(masks):                                           # fixed K, not batch
            dark = dark.addcmul_(mask, mix[:, :, i])
        return dark

    def _brows(self, win, p: "_Params", w: "_Geometry", c: "_Colours", x) -> torch.Tensor:
        """Brows: a parabola over s in [-1 (inner), 1 (outer)]; AUs move each end."""
        a1, a2, a4, a9 = x["AU1"], x["AU2"], x["AU4"], x["AU9"]
        k = w.k
        # AU9's muscles (procerus, depressor supercilii) pull the brows down onto the lids, the
        # inner ends most: disgust scrunches the eyes without anger's V, glare and knit.
        raise_in = (0.09 * a1 + 0.02 * a2 - 0.10 * a4 * (1.0 - 0.5 * a1 * (1.0 - a2)) + 0.03 * a1 * a4 - 0.07 * a9) * k
        raise_out = (0.08 * a2 - 0.04 * a4 - 0.03 * a1 * a4 - 0.05 * a9) * k
        # AU1+2+4 (fear) raises the brows and draws them together into a straight line (FACS), where
        # AU1+2 alone (surprise) arches them high: the arch cancels when all three act.
        arch = p("brow_arch") * k * (1.0 + 0.8 * a2 - 0.9 * a4 - 0.9 * a1 * a2 * a4)
        s_b = (w.A - (w.ex + 0.01 * k - 0.04 * k * a4)) / w.bw                     # [M, E, 1, w]
        brow_v = (w.by - 0.5 * (raise_in + raise_out)) + arch * (s_b * s_b - 1.0) + 0.5 * (raise_in - raise_out) * s_b
        brow_half = w.bt * (0.5 - 0.15 * s_b) + 0.5
        brow_ends = (w.bw * (1.0 - s_b.abs()) + 0.5).clamp(0.0, 1.0)
        a_brow = (brow_half - (w.V - brow_v).abs_()).clamp_(0.0, 1.0).mul_(brow_ends)
        return win.lerp_(_bcast(c.brow), a_brow.unsqueeze(2))

    def _eyes(self, win, w: "_Geometry", c: "_Colours", x):
        """Eyes: an opening between two parabolic lids, iris disc, lash line -> (window, lash, pupil, eye)."""
        a1, a2, a4, a5, a6, a7 = x["AU1"], x["AU2"], x["AU4"], x["AU5"], x["AU6"], x["AU7"]
        a9, a10 = x["AU9"], x["AU10"]
        A, V, side, ew, ex, ey, hu0, hl0 = w.A, w.V, w.side, w.ew, w.ex, w.ey, w.hu0, w.hl0
        ri, gaze = w.ri, w.gaze
        m = c.skin.shape[0]
        # A lowered brow (AU4 without AU1+2 lifting it) presses on the lid fold: AU5 then shows as a
        # glare, not as white above the iris; AU4 alone also lowers the lid (sadness droops).
        brow_low = a4 * (1.0 - 0.5 * a1) * (1.0 - 0.5 * a2)
        droop = 0.8 * a4 * (1.0 - 0.75 * a2)
        # AU5 pulls the upper lid up towards the orbit: by an amount set by the eye's size, not by
        # its resting aperture (narrow-eyed faces open as wide), less where the brow presses down.
        # The brows AU9 lowers press the upper lid down too: with the cheek below, the eye narrows.
        hu = hu0 * (1.0 - 0.1 * a7 - 0.4 * a6 - droop - 0.65 * a9).clamp(min=0.08)
        hu = hu + (0.56 * ew) * a5 * (1.0 - 0.85 * brow_low)
        # The lower lid is pushed up from below by the cheek: AU6, and the bunching of AU9 and AU10.
        hl = hl0 * (1.0 - 0.25 * a7 - 0.5 * a6 - 0.45 * a9 - 0.3 * a10).clamp(min=0.15)
        du = (A - ex) / ew
        t_eye = 1.0 - du * du                                                      # column vector
        v_eye = V - ey + 0.5                                                      # row vector
        # AU1 without AU2 lifts the inner part of the upper lid with the inner brow (oblique, sad eyes).
        lid_tilt = hu0 * (0.5 * a1 * (1.0 - 0.8 * a2))
        upper = v_eye + (hu - lid_tilt * du) * t_eye                               # > 0 below the upper lid
        lower = (hl * t_eye + 1.0) - v_eye                                         # > 0 above the lower lid
        # The lid parabolas alone would leave a sliver along the eye line beyond the corners
        # when the lids nearly meet (AU6/AU7), so the eye is also limited to |du| < 1.
        eye_cols = (ew * (1.0 - du.abs()) + 0.5).clamp(0.0, 1.0)                  # column vector
        a_eye = upper.clamp(0.0, 1.0).mul_(lower.clamp(0.0, 1.0).mul_(eye_cols))
        win = win.lerp_(_bcast(self.sclera.expand(m, -1)), a_eye.unsqueeze(2))
        iris_x = ex + gaze * (2.0 * side - 1.0)
        iris = a_eye * draw_disc(A, V, iris_x, ey + 0.1 * ew, ri)
        win = win.lerp_(_bcast(c.iris), iris.unsqueeze(2))
        pupil = draw_disc(A, V, iris_x, ey + 0.1 * ew, ri * 0.45)
        lash_cols = (ew * (1.05 - du.abs()) + 0.5).clamp(0.0, 1.0)
        lash = upper.add_(0.9 + 0.05 * ew).clamp_(0.0, 1.0).mul_(lower.add_(0.6).clamp_(0.0, 1.0))
        lash = lash.mul_(lash_cols).sub_(a_eye).clamp_(min=0.0)
        return win, lash, pupil, a_eye

    def _mouth(self, win, w: "_Geometry", c: "_Colours", x):
        """Mouth: lip line mid(s) = my + c s^2 + d s^4 - lift (1 - s^2), opening and lips around it
        (a smile curves the whole line, s^2; AU15/AU20 pull only the corners down, s^4).

        Returns (window, lip line, lip shadow, lip fullness profile)."""
        a9, a10, a12, a14, a15 = x["AU9"], x["AU10"], x["AU12"], x["AU14"], x["AU15"]
        a16, a20, a23, a26 = x["AU16"], x["AU20"], x["AU23"], x["AU26"]
        A, V, side, k, mw, my, lip = w.A, w.V, w.side, w.k, w.mw, w.my, w.lip
        m = c.skin.shape[0]
        # AU23 presses the lips together and narrows them (orbicularis oris): anger's tight mouth.
        mw_e = mw * (1.0 + 0.30 * a12 + 0.5 * a20 - 0.35 * a23 - 0.12 * a26 + 0.04 * a16 - 0.15 * a15)
        corner = (0.01 * a16 - 0.12 * a12) * k
        # AU20 (risorius, with the platysma) pulls the corners out and down: fear's stretched,
        # downturned mouth, where surprise's jaw drop alone leaves a relaxed oval.
        corner_dn = (0.075 * a15 + 0.11 * a20) * k
        # A broad smile parts the lips over the upper teeth.
        gap = (0.20 * a26 * (1.0 - 0.8 * a20) + 0.12 * a12 + 0.06 * a16 + 0.025 * a20) * k
        square = (0.7 * a20 + 0.3 * a12).clamp(max=1.0)
        thin = (1.0 - 0.55 * a23 - 0.3 * a20 - 0.25 * a12).clamp(min=0.2)
        ut, lt = lip * 0.8 * thin * (1.0 - 0.35 * a10), lip * thin * (1.0 + 0.25 * a16 + 0.3 * a15)
        s_m = A / mw_e                                                            # [M, E, 1, w]
        t_m = 1.0 - s_m * s_m
        tc = t_m.clamp(min=0.0)
        tl = tc.sqrt()                                                             # lip fullness profile
        # AU10 (and AU9, a little) lifts the upper lip in a squared arch (the tl profile) off the
        # lower lip, which stays: the opening grows by the same amount. The lower lip must not
        # follow: a whole lip line bent up in the middle is the frown of sadness.
        raise_10 = ((0.08 * a10 + 0.04 * a9) * k) * tl
        g = gap * ((1.0 - square) * tc + square * tl) + raise_10                   # opening profile
        s2 = (1.0 - t_m).clamp(max=2.0)
        bend = corner * t_m - corner_dn * s2 * s2 + 0.035 * k * a14 * side * s2 + raise_10
        rel = (V - my - corner + 0.5) + bend                                     # (v - mid) + 0.5
        # Each lip edge is pulled in by half an AA unit so the two ramps cannot overlap (and
        # leave a faint line) where the lip thickness is zero beyond the corners.
        lip_bottom = g + lt * tl + 0.5
        a_lip_bot = (lip_bottom - rel).clamp_(0.0, 1.0)
        a_lips = (rel + (ut * tl - 0.5)).clamp_(0.0, 1.0).mul_(a_lip_bot)
        win = win.lerp_(_bcast(c.lips), a_lips.unsqueeze(2))
        a_cav = (rel - 0.5).clamp_(0.0, 1.0).mul_((g + 0.5 - rel).clamp_(0.0, 1.0))
        win = win.lerp_(_bcast(self.cavity.expand(m, -1)), a_cav.unsqueeze(2))
        upper_teeth = (0.045 * k * (1.0 - 0.6 * a20) + 1.0 - rel).clamp_(0.0, 1.0)
        # Lower teeth show when the lips stretch (AU20) or the jaw drops (AU26); the lower lip AU16
        # turns out covers them. Disgust bares the upper teeth (AU10 lifts the lip off them).
        lower_teeth = (rel + (0.035 * k - g)).clamp_(0.0, 1.0).mul_((0.6 * a20 + 0.3 * a26).clamp(max=1.0) * 0.8)
        teeth = torch.maximum(upper_teeth, lower_teeth).mul_(a_cav)
        win = win.lerp_(_bcast(self.teeth.expand(m, -1)), teeth.unsqueeze(2))
        lip_line = ((0.004 * k).clamp(min=0.25) + 1.0 - (rel - 0.5).abs_()).clamp_(0.0, 1.0)
        lip_shadow = (lip_bottom + 0.06 * k - rel).clamp_(0.0, 1.0).sub_(a_lip_bot)
        return win, lip_line, lip_shadow, tl

    def _expose(self, img, light, p: "_Params", c: "_Colours") -> torch.Tensor:
        """Light, exposure, camera (roll, scale, shift) and sensor noise: frame -> image in [-1, 1]."""
        phase = p("noise_phase")
        # Auto exposure, as a camera metering on the face: a dark face is exposed up (partially,
        # and never down), so its shadows and creases keep some contrast; the background may clip.
        exposure = (0.5 / (c.skin_rgb @ self.luma).clamp(min=0.05)).pow(0.75).clamp(1.0, 2.0)
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
