"""The bottom layer: errors and exit statuses, progress lines, input checks.

Nothing here imports OpenMMLab, torch or boto3, so every layer above may use it.
"""
