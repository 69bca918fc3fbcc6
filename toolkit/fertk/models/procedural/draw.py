"""Drawing primitives of the procedural face model (coverage of shapes on separable coordinates) and
the identity crease masks that action units deepen."""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------------------------------------
# Drawing on separable coordinates. The face is drawn in an axis-aligned, face-centred frame, so
# a horizontal coordinate is a column vector [..., 1, W] and a vertical one a row vector
# [..., H, 1]; a shape's terms are computed on those vectors and only their final combination is
# a full [..., H, W] map (one to three full-size ops per shape). Roll, translation and scale are
# applied to the finished frame by one bilinear grid_sample. Lengths are in AA units (pixels
# divided by the edge softness), so coverage of a signed distance d (positive inside) is
# clamp(d + 0.5, 0, 1): a one-pixel ramp at any resolution.


def draw_ellipse(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Coverage of an axis-aligned ellipse (u: column vector, v: row vector, AA units).

    Uses the first-order distance d = h (1 - q), exact in slope at the boundary, with h half
    the geometric-mean radius; it avoids a full-size sqrt.
    """
    h = 0.5 * torch.sqrt(rx * ry)
    du, dv = (u - cx) / rx, (v - cy) / ry
    return ((0.5 + h) - h * du * du - h * dv * dv).clamp_(0.0, 1.0)


def draw_squircle(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Coverage of an axis-aligned superellipse |du|^4 + |dv|^4 <= 1 (straight sides, round corners)."""
    h = 0.25 * torch.sqrt(rx * ry)                                                # d = h (1 - q) at the boundary
    du, dv = (u - cx) / rx, (v - cy) / ry
    du, dv = du * du, dv * dv
    return ((0.5 + h) - h * du * du - h * dv * dv).clamp_(0.0, 1.0)


def draw_blob(u: torch.Tensor, v: torch.Tensor, cx, cy, rx, ry, weight=1.0) -> torch.Tensor:
    """Soft bump weight * max(1 - q, 0) of an axis-aligned ellipse (for shadows and highlights)."""
    du, dv = (u - cx) / rx, (v - cy) / ry
    return (weight - weight * du * du - weight * dv * dv).clamp_(min=0.0)


def draw_disc(u: torch.Tensor, v: torch.Tensor, cx, cy, r) -> torch.Tensor:
    """Coverage of a circle of radius r (first-order distance (r^2 - d^2) / 2r)."""
    du, dv = u - cx, v - cy
    inv = 0.5 / r
    return ((0.5 + 0.5 * r) - inv * du * du - inv * dv * dv).clamp_(0.0, 1.0)


def palette_lookup(t: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear palette lookup: t [M] in [0, 1] -> colours [M, C]."""
    k = palette.shape[0]
    knots = torch.arange(k, dtype=t.dtype, device=t.device)
    weights = (1.0 - (t.unsqueeze(-1) * (k - 1) - knots).abs()).clamp(min=0.0)
    return weights @ palette


def draw_fold(A, V, nw, ny, mw, my, k) -> torch.Tensor:
    """Nasolabial fold: a soft crease from above the nose wing curving out past the mouth corner."""
    # It starts beside the nose, above the wing: that upper part is what AU9/AU10 deepen most.
    v0, v1 = ny - 0.04 * k, my + 0.06 * k
    t = ((V - v0) / (v1 - v0)).clamp(0.0, 1.0).sqrt()                         # row vector
    fold_u = nw * 1.7 + (mw + 0.07 * k - nw * 1.7) * t
    on = (V - v0 + 0.5).clamp(0.0, 1.0) * (v1 - V + 0.5).clamp(0.0, 1.0)
    inv_width = 1.0 / (0.016 * k).clamp(min=0.8)
    return (1.0 - (A - fold_u).abs_().mul_(inv_width)).clamp_(min=0.0).mul_(on)

def crease_masks(A, An, U, V, k, fx, ex, ey, ew, hl0, by, ny, nw, my, mw, nostrils, fold,
                  no_fringe) -> list[torch.Tensor]:
    """Identity masks [M, 1, H, W] that AUs deepen, in the column order of `au_mask_weights`."""
    two_pi = 2.0 * math.pi

    def ridge(d: torch.Tensor, half_width) -> torch.Tensor:
        return (1.0 - d.abs() / half_width).clamp(min=0.0)

    forehead_lines = (torch.cos((V - by) * (two_pi / (0.055 * k))) - 0.2).clamp(min=0.0)   # row
    crows_lines = torch.cos((V - ey) * (two_pi / (0.045 * k))) * 0.5 + 0.5                  # row
    # AU9's wrinkles run across the root and bridge of the nose, shallow over a darker band.
    nose_lines = torch.cos((V - ey) * (two_pi / (0.05 * k))) * 0.3 + 0.5                  # row
    glabella_line = ridge(A - 0.035 * k, (0.008 * k).clamp(min=0.6))                       # column
    bulge_line = ridge(V - (ey + hl0 + 0.035 * k), (0.01 * k).clamp(min=0.6))              # row
    cheek = draw_blob(A, V, ex + 0.03 * k, ey + 0.16 * k, 0.11 * k, 0.08 * k)
    flare = draw_ellipse(An, V, nw * 0.92, ny - 0.012 * k, 0.030 * k, 0.015 * k)
    return [
        draw_blob(A, V, 0.035 * k, by + 0.01 * k, 0.05 * k, 0.06 * k).mul_(glabella_line),     # glabella
        draw_blob(A, V, 0.0, by - 0.14 * k, 0.32 * k, 0.11 * k).mul_(forehead_lines).mul_(no_fringe),
        draw_blob(A, V, 0.0, by - 0.12 * k, 0.15 * k, 0.10 * k).mul_(forehead_lines).mul_(no_fringe),  # mid (AU1)
        draw_blob(A, V, ex, ey - 0.3 * ew, 1.3 * ew, 0.9 * ew),                                # brow shadow
        draw_blob(A, V, ex + ew * 1.25, ey + 0.01 * k, 0.05 * k, 0.05 * k).mul_(crows_lines),  # crow's feet
        fold,                                                                               # nasolabial
        cheek.mul_(cheek),                                                                  # cheek highlight
        draw_blob(A, V, ex, ey + hl0, ew * 1.1, 0.08 * k).mul_(bulge_line),                     # lower-lid bulge
        draw_blob(An, V, 0.0, ey + 0.03 * k, nw * 1.3, 0.09 * k).mul_(nose_lines),              # nose wrinkles
        flare.sub_(nostrils),                                                               # nostril flare
        draw_blob(U, V, fx - mw * 1.08, my - 0.005 * k, 0.028 * k, 0.03 * k),                  # AU14 dimple
    ]
