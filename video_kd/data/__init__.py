"""Datasets: the layouts we read (ours, MMAction2's lists, Kinetics CSVs), the video check,
streaming from S3 during training, re-encoding and the generated dataset of the demo."""
