"""The check_inputs step (see component.py and video_kd.validation.check_pipeline_params)."""
