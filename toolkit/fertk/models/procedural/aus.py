"""Action units of the procedural face model: the AU vector's columns, the EMFACS prototypes, and
how strongly each AU deepens each identity crease mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fertk.core.emotions import CONTEMPT, NEUTRAL, normalize_emotion
from fertk.core.errors import InvalidInputError

ACTION_UNITS: tuple[str, ...] = (
    "AU1",   # inner brow raiser
    "AU2",   # outer brow raiser
    "AU4",   # brow lowerer (lowers and knits the brows)
    "AU5",   # upper lid raiser
    "AU6",   # cheek raiser (squints from below, crow's feet)
    "AU7",   # lid tightener (raises and straightens the lower lid)
    "AU9",   # nose wrinkler (also lowers the brows onto the lids and raises the upper lip a little)
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
AU_DIM = len(ACTION_UNITS)


def action_units() -> tuple[str, ...]:
    """Names of the AU vector's columns, in order."""
    return ACTION_UNITS


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


def au_mask_weights() -> torch.Tensor:
    """[au_dim, K]: how strongly each AU deepens each crease mask (column order of `crease_masks`)."""
    w = torch.zeros(AU_DIM, 11)
    glabella, forehead, forehead_mid, brow_shadow, crows, fold, cheek, bulge, nose, flare, dimple = range(11)
    w[_AU["AU4"], glabella] = 0.6
    # AU9 wrinkles the nose root across, not the glabella up and down (those lines are AU4's).
    w[_AU["AU1"], glabella] = -0.4
    w[_AU["AU1"], forehead] = 0.05
    w[_AU["AU1"], forehead_mid] = 0.1
    w[_AU["AU2"], forehead] = 0.15
    w[_AU["AU4"], forehead_mid] = -0.1
    # The lowered brow shades the eye (sadness, anger); AU2, lifting the outer brow, lets light back in.
    w[_AU["AU4"], brow_shadow] = 0.6
    w[_AU["AU9"], brow_shadow] = 0.1
    w[_AU["AU1"], brow_shadow] = -0.08
    w[_AU["AU2"], brow_shadow] = -0.18
    w[_AU["AU6"], crows] = 0.2
    w[_AU["AU6"], fold] = 0.08
    w[_AU["AU12"], fold] = 0.16
    # AU9 and AU10 raise the infraorbital triangle: the nasolabial furrow deepens into a crease.
    w[_AU["AU9"], fold] = 0.5
    w[_AU["AU10"], fold] = 0.4
    w[_AU["AU6"], cheek] = -0.07
    w[_AU["AU12"], cheek] = -0.04
    w[_AU["AU10"], cheek] = -0.05
    w[_AU["AU6"], bulge] = 0.25
    w[_AU["AU10"], bulge] = 0.15
    w[_AU["AU7"], bulge] = 0.3                       # the tightened lower lid bunches
    w[_AU["AU9"], nose] = 0.6
    w[_AU["AU9"], flare] = 0.55
    w[_AU["AU14"], dimple] = 0.45
    return w


def au_mask_floor() -> torch.Tensor:
    """[K]: the lowest mixed weight of each crease mask (0 for lines, which cannot turn into highlights)."""
    floor = torch.full((11,), -1.0)
    floor[0] = 0.0                                   # glabella lines (column order of `crease_masks`)
    floor[2] = 0.0                                   # mid-forehead lines
    return floor
