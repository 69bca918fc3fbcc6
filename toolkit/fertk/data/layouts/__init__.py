"""Dataset readers: each public FER dataset's documented layout → a list of `FaceRecord`s.

Every reader returns `(records, report)`: records carry canonical labels (`fertk.core.emotions`), a
subject id, the dataset name as `source`, an image path (or inline pixels for FER2013) and
layout-specific `meta`; the `ReadReport` counts what was dropped and why. Classes outside
`classes` (default: the six Ekman emotions) are dropped unless asked for with `keep=("neutral",)`
or `classes=label_set(neutral=True)`. A missing root, an empty dataset or a label the dataset's
documentation does not define raises a one-line `DatasetError` naming the file.

Layouts (what each reader expects):

- ``folder``: ``<root>/<emotion>/*.png|jpg|jpeg|bmp`` (Keras / torchvision ImageFolder; folder
  names may be any common spelling: "angry", "Happy", "angery"), or one level of split folders
  ``<root>/<split>/<emotion>/...`` (train/test, train/val/test). Subject: the `subject_pattern`
  regex on the file stem, else the image's path below the root (each image its own subject).
- ``rafd``: Radboud Faces file names ``Rafd090_01_Caucasian_female_angry_frontal.jpg`` (camera
  angle, model number, ethnicity, gender, emotion, gaze), anywhere below the root. Frontal only
  (angle 090, gaze frontal) by default.
- ``ckplus``: ``cohn-kanade-images/S005/001/S005_001_00000011.png`` with
  ``Emotion/S005/001/S005_001_00000011_emotion.txt`` (one float code, `CKPLUS_CODES`). Only
  sequences with an emotion file are labelled; their last `peak_frames` frames are kept, and
  with `neutral_first=True` their first frame too, as neutral.
- ``oulu``: Oulu-CASIA NIR&VIS ``OriginalImg/<VL|NI>/<Strong|Weak|Dark>/P001/<Anger|...>/000.jpeg``
  (the root may be any folder on that path). The last `peak_frames` frames of each sequence;
  sensor VL and lighting Strong by default.
- ``mmi``: MMI ``Sessions/<id>/`` folders, each with ``session.xml`` (subject id, camera view),
  a ``<name>.xml`` whose ``<Metatag Name="Emotion" Value="1..6"/>`` gives `MMI_CODES`, and
  either the ``<name>.avi`` video or pre-extracted frame images (in the session folder or a
  ``frames/`` folder inside it, in name order). MMI sequences go neutral → apex → neutral, so
  the `peak_frames` frames around the middle of the sequence are kept. Sessions without an
  emotion (AU-only recordings) are dropped and counted. Frontal view ("0") only by default.
- ``affectnet``: ``training.csv`` / ``validation.csv`` (columns subDirectory_filePath, face_x,
  face_y, face_width, face_height, facial_landmarks, expression, valence, arousal) beside
  ``Manually_Annotated_Images/``. Codes 8-10 (None, Uncertain, No-Face) are not emotions and are
  dropped. The face box goes to ``meta["face_box"]`` for `detect="box"` cropping. AffectNet has no
  subject ids: the subject is the image file, so subject-disjoint splits are image-disjoint.
- ``fer2013``: ``fer2013.csv`` (columns emotion, pixels, Usage; Kaggle's later
  ``icml_face_data.csv`` has the same columns): 48×48 gray faces inline → ``FaceRecord.pixels``;
  Usage in ``meta["split"]``; subject = row index (FER2013 has no subject ids either).

Modules: `common` (the report, class filter and walk helpers), `folder`, `lab` (RaFD, CK+,
Oulu-CASIA, MMI), `tables` (FER2013, AffectNet csv files), `detect` (layout guess, `read_records`).
"""

from fertk.data.layouts.common import IMAGE_SUFFIXES, ReadReport, resolve_classes
from fertk.data.layouts.detect import LAYOUTS, READERS, detect_layout, read_records
from fertk.data.layouts.folder import read_folder
from fertk.data.layouts.lab import read_ckplus, read_mmi, read_oulu, read_rafd
from fertk.data.layouts.tables import read_affectnet, read_fer2013

__all__ = [
    "IMAGE_SUFFIXES", "LAYOUTS", "READERS", "ReadReport", "detect_layout", "read_affectnet",
    "read_ckplus", "read_fer2013", "read_folder", "read_mmi", "read_oulu", "read_rafd",
    "read_records", "resolve_classes",
]
