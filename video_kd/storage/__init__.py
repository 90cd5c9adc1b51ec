"""S3 and verified downloads: the only package that talks to S3 (and the only one importing boto3).

``s3`` is the client (uploads, conditional writes, listings), ``s3_policy`` its fault
policy, ``s3_conditional`` create-if-absent / compare-and-swap writes, ``s3_fileio``
mmengine's file backend for ``s3://`` paths (streamed reads in training), ``download``
fetches of http(s)/s3/local files checked against a sha256.
"""
