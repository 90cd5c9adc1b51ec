"""The check_inputs step (see component.py and video_kd.core.checks.check_pipeline_params)."""
