"""Fixtures shared by several test modules."""

from s3_fixtures import s3_bucket, s3_server  # noqa: F401  (a real S3 endpoint on loopback)
