"""Per-person estimates: faces detected on every sampled frame, tracked with stable ids, embedded by
the shared CLIP image tower, each with its own frame window (see `FaceAnalyzer`)."""
from models.face_detector import HaarFaceDetector

from .analyzer import FaceAnalyzer, FaceView
from .tracker import FaceTracker, load_tracker_library

__all__ = ["FaceAnalyzer", "FaceView", "HaarFaceDetector", "FaceTracker", "load_tracker_library"]
