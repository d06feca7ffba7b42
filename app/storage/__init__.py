"""Where the service keeps what must outlive a process: model versions and datasets.

One interface, two backends (``CONVSERVE_REGISTRY_URL`` chooses, in `factory`):

- `objects.ObjectStore`: keys and bytes, with create-only writes and a lock per key;
  `local.LocalObjects` keeps them in a folder, `s3.S3Objects` in a bucket;
- `registry.ModelRegistry` (a folder) and `s3registry.S3Registry` (a bucket, with a local
  cache) keep model versions; the bucket's registry goes through `S3Objects`;
- `datasets.DatasetStore` keeps versioned datasets on either `ObjectStore`.

Imports point one way: ``objects`` <- ``local``, ``s3`` <- ``registry``, ``s3registry``,
``datasets`` <- ``factory``. Nothing here imports the web layer.
"""
