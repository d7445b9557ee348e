"""Faces in a photo, cut out as FER2013's are: 48x48 grayscale, the face upright and filling it.

OpenCV's Viola-Jones cascades find them: their weights ship inside the pinned
opencv-python-headless wheel (nothing is downloaded), they run in milliseconds on a CPU, and they
look for frontal faces, the kind FER2013 holds. Each face is levelled by its eyes (found by the
eye cascade in either upper half of the face, when both are), then cut with a small margin, as
FER2013's registered crops show the whole face, and resized to 48x48.
"""
import functools
import math
import typing

import numpy as np

SIZE = 48
_MARGIN = 0.1       # of the detected box, on every side: FER2013 crops show the chin and brow
_MOST_TILT = 30     # degrees; a larger angle between the eyes is a wrong eye, not a tilted head


class Face(typing.NamedTuple):
    box: tuple[int, int, int, int]   # x, y, width, height in the photo's pixels
    crop: np.ndarray                 # 48x48 uint8, levelled
    tilt: float                      # degrees the face was turned to level its eyes


def find(gray: np.ndarray, smallest: int = 24) -> list[Face]:
    """Every frontal face of at least `smallest` pixels in a grayscale photo, left to right."""
    import cv2

    boxes = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    faces = []
    for x, y, w, h in sorted((tuple(map(int, b)) for b in boxes), key=lambda b: b[0]):
        tilt = _tilt(gray[y:y + h, x:x + w])
        centre = (x + w / 2, y + h / 2)
        turned = cv2.warpAffine(gray, cv2.getRotationMatrix2D(centre, tilt, 1.0),
                                (gray.shape[1], gray.shape[0]), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        side = max(w, h) * (1 + 2 * _MARGIN)
        crop = cv2.getRectSubPix(turned, (round(side), round(side)), centre)
        faces.append(Face((x, y, w, h), cv2.resize(crop, (SIZE, SIZE),
                                                   interpolation=cv2.INTER_AREA), tilt))
    return faces


def _tilt(face: np.ndarray) -> float:
    """The angle of the line through the eyes (0 when they are not both found)."""
    h, w = face.shape
    band = face[h // 5:h * 3 // 5]  # the eyes lie in this band of a frontal face box
    eyes = []
    for left in (0, w // 2):
        found = _cascade("haarcascade_eye_tree_eyeglasses.xml").detectMultiScale(
            band[:, left:left + w // 2], scaleFactor=1.05, minNeighbors=3,
            minSize=(w // 10, w // 10))
        if len(found):
            ex, ey, ew, eh = max(found, key=lambda e: e[2] * e[3])
            eyes.append((left + ex + ew / 2, ey + eh / 2))
    if len(eyes) < 2:
        return 0.0
    (x1, y1), (x2, y2) = eyes
    angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
    return angle if abs(angle) <= _MOST_TILT else 0.0


@functools.cache
def _cascade(name: str):
    import cv2

    return cv2.CascadeClassifier(cv2.data.haarcascades + name)
