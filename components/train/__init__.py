"""The train step (see component.py and video_kd.steps)."""
