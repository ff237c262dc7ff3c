"""Datasets on disk: loaders (RAF-DB, FER2013, folder-per-class), records and image decoding."""
