"""sharpscope: loss-landscape sharpness vs generalization for speech deepfake detectors."""

__version__ = "0.1.0"
