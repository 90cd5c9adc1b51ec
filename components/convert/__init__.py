"""The convert step (see component.py and video_kd.steps)."""
