"""The teacher_download step (see component.py and video_kd.steps)."""
