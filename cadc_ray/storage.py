"""Storage locations: a URI or a local (possibly NFS) path.

A URI such as ``s3://bucket/prefix`` is handed to Ray / pyarrow as it is (``Path`` would
turn ``s3://b`` into ``s3:/b``); a local path is made absolute before it crosses a process
boundary, because Ray's workers do not run in the driver's working directory.
"""

from __future__ import annotations


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` storage locations (pyarrow resolves them, not the OS)."""
    return "://" in location
