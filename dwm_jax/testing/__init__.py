"""Test servers for code that reads and writes buckets: fake-gcs-server and a latency proxy."""
