"""The data_prep step (see component.py and video_kd.steps)."""
