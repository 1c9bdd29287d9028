"""The `sddcompress` command line."""
