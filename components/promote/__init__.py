"""The promote step (see component.py and video_kd.steps.promote)."""
