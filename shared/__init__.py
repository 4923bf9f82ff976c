"""mmsearch's common package: configuration, encoders, fusion, shard index and job records.

Imported by both the API (which never imports torch) and the workers; modules that need torch
import it themselves, so importing this package is cheap.
"""
