"""The evaluate step (see component.py and video_kd.steps)."""
