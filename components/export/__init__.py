"""The export step (see component.py and video_kd.steps.export)."""
