"""Render the README sample grid of the procedural face model: identities x (neutral + six emotions), both styles.

Usage: python docs/make_procedural_grid.py [--out docs/images/procedural_grid.png] [--size 96] [--rows 8]
       [--framing portrait|face]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from fertk.core.emotions import EKMAN, NEUTRAL
from fertk.models.procedural import ProceduralConfig, ProceduralFaces, expression_aus, random_identities

COLUMNS = (NEUTRAL,) + EKMAN


def render_panel(style: str, size: int, rows: int, seed: int, intensity: float, framing: str) -> np.ndarray:
    """One style's grid as an RGB uint8 array [rows*size, len(COLUMNS)*size, 3]."""
    model = ProceduralFaces(ProceduralConfig(resolution=size, color=True, style=style, framing=framing))
    identities = random_identities(rows, seed)
    with torch.no_grad():
        images = model.render_expressions(identities, expression_aus(COLUMNS, intensity))
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)      # [M, E, 3, H, W]
    pixels = pixels.permute(0, 3, 1, 4, 2).reshape(rows * size, len(COLUMNS) * size, 3)
    return pixels.numpy()


def header(width: int, size: int, title: str) -> np.ndarray:
    """A white strip with the style name and the column labels."""
    strip = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(strip, title, (4, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for col, name in enumerate(COLUMNS):
        cv2.putText(strip, name, (col * size + 4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (40, 40, 40), 1,
                    cv2.LINE_AA)
    return strip


def main() -> None:
    """Write the grid PNG."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images" / "procedural_grid.png")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--intensity", type=float, default=1.0)
    parser.add_argument("--framing", default="portrait", choices=("portrait", "face"))
    args = parser.parse_args()
    panels = []
    for style in ("studio", "natural"):
        panel = render_panel(style, args.size, args.rows, args.seed, args.intensity, args.framing)
        panels += [header(panel.shape[1], args.size, f"style={style}, intensity={args.intensity:g}"), panel]
    gap = np.full((6, panels[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate(panels[:2] + [gap] + panels[2:], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(args.out)


if __name__ == "__main__":
    main()
