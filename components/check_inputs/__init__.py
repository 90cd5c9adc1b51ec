"""The check_inputs step (see component.py and video_kd.steps.check_inputs.check_pipeline_params)."""
