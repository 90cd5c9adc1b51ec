"""The KFP pipeline definition (kd_pipeline.py) and its compiled IR (kd_pipeline.yaml)."""
