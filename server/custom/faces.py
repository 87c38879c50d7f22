"""Face analysis for the identity and lip-sync models: find the largest face, its five
landmarks (eyes, nose, mouth corners) and an identity embedding.

Two backends, chosen by the manifest's entrypoint.options.face_analysis:

- `insightface` (production): insightface's FaceAnalysis over the antelopev2 ONNX models
  (SCRFD detector with landmarks, glintr100 ArcFace recognition) baked under
  `<model_dir>/<face_models>/models/antelopev2/`. The embedding is the 512-d ArcFace vector
  InstantID was trained on. `face_modules: [detection]` skips recognition where only the box
  and landmarks are needed (MuseTalk).
- `opencv-haar` (the CPU stand-ins): OpenCV's frontal-face Haar cascade, whose trained weights
  ship inside opencv-python-headless, so it really finds (and really misses) faces on a CPU;
  landmarks are placed at fixed proportions of the box, and the embedding is a seeded random
  projection of the 32x32 grey face crop stored in the stand-in's repository. It proves the
  plumbing (no face -> 422, largest face chosen, embedding shape), not identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.errors import InputError, LoadError

EMBEDDING_DIM = 512
# Landmarks as fractions of a frontal face box: left eye, right eye, nose tip, mouth corners.
_HAAR_LANDMARKS = np.array([[0.32, 0.40], [0.68, 0.40], [0.50, 0.60], [0.36, 0.78], [0.64, 0.78]], dtype=np.float32)


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    landmarks: np.ndarray  # 5 x 2 (x, y) in pixels
    embedding: np.ndarray | None  # EMBEDDING_DIM float32; None when the analyzer runs detection only


class FaceAnalyzer(Protocol):
    embeds: bool  # whether its faces carry an identity embedding

    def faces(self, rgb: np.ndarray) -> list[Face]: ...


def largest_face(analyzer: FaceAnalyzer, rgb: np.ndarray, field: str) -> Face:
    """The biggest face in the image, or a 422 that says there is none."""
    found = analyzer.faces(rgb)
    if not found:
        raise InputError(f"{field}: no face found in the image; send a photo with one clearly visible, "
                         f"front-facing face")
    return max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


class InsightFaceAnalyzer:
    def __init__(self, root: Path, device: str, modules: tuple[str, ...] = ("detection", "recognition")) -> None:
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise LoadError(f"face_analysis insightface needs the insightface package in the image: {exc}") from None
        if not (root / "models" / "antelopev2").is_dir():
            raise LoadError(f"face_analysis insightface: no antelopev2 models under {root / 'models'}")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.app = FaceAnalysis(name="antelopev2", root=str(root), providers=providers,
                                allowed_modules=list(modules))
        self.embeds = "recognition" in modules
        self.app.prepare(ctx_id=0 if device == "cuda" else -1, det_size=(640, 640))

    def faces(self, rgb: np.ndarray) -> list[Face]:
        found = self.app.get(np.ascontiguousarray(rgb[:, :, ::-1]))  # insightface reads BGR
        return [Face(tuple(float(v) for v in f.bbox), np.asarray(f.kps, dtype=np.float32),
                     None if f.embedding is None else np.asarray(f.embedding, dtype=np.float32)) for f in found]


class HaarFaceAnalyzer:
    embeds = True

    def __init__(self, projection_file: Path) -> None:
        import cv2
        from safetensors.numpy import load_file

        cascade = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.detector = cv2.CascadeClassifier(str(cascade))
        if self.detector.empty():
            raise LoadError(f"face_analysis opencv-haar: cannot read {cascade}")
        try:
            self.projection = load_file(str(projection_file))["projection"]
        except (OSError, KeyError) as exc:
            raise LoadError(f"face_analysis opencv-haar: cannot read the projection in {projection_file}: {exc}") from None
        if self.projection.shape != (32 * 32, EMBEDDING_DIM):
            raise LoadError(f"face_analysis opencv-haar: projection is {self.projection.shape}, expected (1024, 512)")

    def faces(self, rgb: np.ndarray) -> list[Face]:
        import cv2

        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        smallest = max(24, min(grey.shape) // 10)
        boxes = self.detector.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
        found = []
        for x, y, w, h in (boxes if len(boxes) else []):
            crop = cv2.resize(grey[y:y + h, x:x + w], (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
            crop = (crop - crop.mean()) / (crop.std() + 1e-6)
            landmarks = _HAAR_LANDMARKS * np.array([w, h], dtype=np.float32) + np.array([x, y], dtype=np.float32)
            found.append(Face((float(x), float(y), float(x + w), float(y + h)), landmarks,
                              (crop.reshape(-1) @ self.projection).astype(np.float32)))
        return found


def face_analyzer(options: dict[str, Any], model_dir: Path, device: str) -> FaceAnalyzer:
    backend = options.get("face_analysis", "insightface")
    if backend == "insightface":
        modules = options.get("face_modules", ("detection", "recognition"))
        return InsightFaceAnalyzer(model_dir / str(options.get("face_models", ".")), device,
                                   (modules,) if isinstance(modules, str) else tuple(modules))
    if backend == "opencv-haar":
        return HaarFaceAnalyzer(model_dir / str(options.get("face_projection", "face/projection.safetensors")))
    raise LoadError(f"entrypoint.options.face_analysis {backend!r}: expected insightface or opencv-haar")
