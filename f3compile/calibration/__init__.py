"""Calibration: the sampling loop that records aggregate temporal attention."""

from .calibrate import CalibrationConfig, calibrate, read_prompts
from .stats import CalibrationStats

__all__ = ["CalibrationConfig", "CalibrationStats", "calibrate", "read_prompts"]
