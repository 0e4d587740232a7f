"""Training data: the shared feature schema, normalisation, sample windows and the streaming loader."""

from .features import FEATURES, LANG_FEATURE, POLICY_FEATURES, Feature, FrameError, feature, validate_frame
from .loader import CalvinWindowDataset, FrameCache
from .normalization import Normalizer, compute_statistics, load_or_compute_statistics
from .windows import WindowSpec, annotated_samples, episode_samples

__all__ = [
    "FEATURES", "LANG_FEATURE", "POLICY_FEATURES", "CalvinWindowDataset", "Feature", "FrameCache",
    "FrameError", "Normalizer", "WindowSpec", "annotated_samples", "compute_statistics",
    "episode_samples", "feature", "load_or_compute_statistics", "validate_frame",
]
