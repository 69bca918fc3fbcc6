"""Identity parameters of the procedural face model and the ranges each rendering style draws them from.

A style is a stand-in for one lab database: "studio" is a posed, evenly lit, frontal capture
(CK+-like); "natural" is an uncontrolled one (side light, varied background, pose spread, blur
and sensor noise, wider range of faces). Both map the same uniform [0, 1) identity vector, so the
same identity seed gives "the same person" rendered under two capture conditions.

Units: face units, origin at the face centre, +v down, the face half-width is about 0.55.
"""

from __future__ import annotations

# Order matters: it is the column order of the identity vector.
IDENTITY_PARAMS: tuple[str, ...] = (
    "face_width",       # half-width of the face (face units)
    "face_height",      # half-height of the face
    "jaw",              # how much the lower face narrows towards the chin (0 = oval)
    "skin_tone",        # position along the skin palette (light -> dark)
    "skin_warmth",      # red/yellow shift of the skin colour
    "eye_size",         # eye half-width
    "eye_spacing",      # horizontal distance of each eye from the midline
    "eye_height",       # vertical position of the eyes
    "eye_openness",     # resting lid aperture, as a fraction of the eye half-width
    "iris",             # iris palette position (dark brown -> blue); also gaze
    "brow_thickness",   # brow thickness
    "brow_height",      # gap between eye and brow
    "brow_arch",        # brow arch
    "nose_length",      # eye line to nose tip
    "nose_width",       # nostril half-spacing
    "mouth_height",     # nose tip to lip line
    "mouth_width",      # mouth half-width
    "lip_thickness",    # lip fullness
    "lip_color",        # lip redness
    "hair_color",       # hair palette position
    "hairline",         # height of the hairline above the face centre
    "hair_volume",      # how far the hair stands off the head
    "hair_length",      # how far the hair falls behind the face (short -> shoulder length)
    "hair_part",        # side tilt of the fringe
    "light_x",          # light direction, horizontal component
    "light_y",          # light direction, vertical component (negative = from above)
    "light_contrast",   # diffuse / ambient balance
    "yaw",              # head turn (shifts inner features across the face)
    "roll",             # in-plane rotation (radians)
    "shift_x",          # translation in the image (image units, [-1, 1] frame)
    "shift_y",
    "scale",            # face size in the image
    "background_hue",   # background palette position
    "background_level", # background brightness
    "background_slope", # background gradient strength
    "clothing",         # clothing palette position
    "blur",             # edge softness in pixels (camera blur)
    "noise",            # sensor noise amplitude
    "noise_phase",      # which sensor-noise pattern (mix of two fixed textures)
    "age",              # depth of resting folds and lines
)

# Ranges (lo, hi) per style: a parameter is lo + (hi - lo) * u for u uniform in [0, 1).
_COMMON: dict[str, tuple[float, float]] = {
    "face_width": (0.50, 0.58),
    "face_height": (0.70, 0.78),
    "jaw": (0.10, 0.32),
    "skin_tone": (0.0, 0.55),
    "skin_warmth": (-0.5, 0.5),
    "eye_size": (0.095, 0.115),
    "eye_spacing": (0.20, 0.24),
    "eye_height": (-0.08, -0.03),
    "eye_openness": (0.36, 0.46),
    "iris": (0.0, 1.0),
    "brow_thickness": (0.032, 0.050),
    "brow_height": (0.115, 0.145),
    "brow_arch": (0.012, 0.035),
    "nose_length": (0.23, 0.30),
    "nose_width": (0.050, 0.068),
    "mouth_height": (0.12, 0.15),
    "mouth_width": (0.155, 0.195),
    "lip_thickness": (0.026, 0.040),
    "lip_color": (0.0, 1.0),
    "hair_color": (0.0, 0.55),
    "hairline": (0.42, 0.58),
    "hair_volume": (0.0, 1.0),
    "hair_length": (-0.05, 0.8),
    "hair_part": (-0.25, 0.25),
    "light_x": (-0.15, 0.15),
    "light_y": (-0.35, -0.15),
    "light_contrast": (0.25, 0.40),
    "yaw": (-0.04, 0.04),
    "roll": (-0.05, 0.05),
    "shift_x": (-0.02, 0.02),
    "shift_y": (-0.02, 0.02),
    "scale": (0.97, 1.03),
    "background_hue": (0.0, 0.25),
    "background_level": (0.70, 0.85),
    "background_slope": (0.0, 0.05),
    "clothing": (0.0, 0.3),
    "blur": (1.0, 1.25),
    "noise": (0.0, 0.01),
    "noise_phase": (0.0, 6.2831853),
    "age": (0.0, 0.6),
}

STYLE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "studio": dict(_COMMON),
    "natural": {
        **_COMMON,
        "face_width": (0.47, 0.61),
        "face_height": (0.67, 0.80),
        "jaw": (0.05, 0.42),
        "skin_tone": (0.0, 1.0),
        "eye_size": (0.088, 0.118),
        "eye_spacing": (0.19, 0.25),
        "eye_openness": (0.32, 0.50),
        "brow_thickness": (0.026, 0.054),
        "nose_length": (0.22, 0.32),
        "mouth_width": (0.145, 0.205),
        "lip_thickness": (0.022, 0.044),
        "hair_color": (0.0, 1.0),
        "hairline": (0.40, 0.62),
        "hair_length": (-0.05, 1.1),
        "light_x": (-0.75, 0.75),
        "light_y": (-0.55, 0.15),
        "light_contrast": (0.40, 0.75),
        "yaw": (-0.22, 0.22),
        "roll": (-0.20, 0.20),
        "shift_x": (-0.07, 0.07),
        "shift_y": (-0.06, 0.06),
        "scale": (0.88, 1.08),
        "background_hue": (0.0, 1.0),
        "background_level": (0.2, 0.9),
        "background_slope": (0.05, 0.35),
        "clothing": (0.0, 1.0),
        "blur": (1.1, 2.4),
        "noise": (0.005, 0.03),
        "age": (0.0, 1.0),
    },
}

STYLES: tuple[str, ...] = tuple(STYLE_RANGES)

# Palettes: a parameter t in [0, 1] interpolates piecewise-linearly along the rows (sRGB in [0, 1]).
SKIN_PALETTE = (
    (0.97, 0.84, 0.75),
    (0.92, 0.74, 0.62),
    (0.80, 0.59, 0.45),
    (0.62, 0.43, 0.30),
    (0.42, 0.28, 0.19),
    (0.28, 0.18, 0.12),
)
HAIR_PALETTE = (
    (0.07, 0.06, 0.06),   # black
    (0.20, 0.14, 0.10),   # dark brown
    (0.38, 0.26, 0.16),   # brown
    (0.55, 0.28, 0.13),   # auburn
    (0.70, 0.56, 0.36),   # dark blond
    (0.86, 0.75, 0.52),   # blond
    (0.66, 0.65, 0.64),   # grey
)
IRIS_PALETTE = (
    (0.16, 0.10, 0.06),   # dark brown
    (0.32, 0.20, 0.11),   # brown
    (0.40, 0.34, 0.17),   # hazel
    (0.28, 0.40, 0.28),   # green
    (0.30, 0.44, 0.60),   # blue
)
BACKGROUND_PALETTE = (
    (0.88, 0.88, 0.90),   # studio grey-white
    (0.80, 0.84, 0.90),   # pale blue
    (0.55, 0.66, 0.45),   # foliage
    (0.62, 0.50, 0.38),   # wood
    (0.35, 0.42, 0.60),   # blue wall
    (0.70, 0.62, 0.50),   # beige
    (0.40, 0.40, 0.40),   # dark grey
)
CLOTHING_PALETTE = (
    (0.15, 0.15, 0.18),
    (0.85, 0.85, 0.85),
    (0.20, 0.30, 0.55),
    (0.55, 0.15, 0.15),
    (0.30, 0.45, 0.30),
    (0.60, 0.55, 0.40),
)
