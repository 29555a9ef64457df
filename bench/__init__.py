"""bench: hand-crafted vs pretrained-CNN features, benchmarked with evidence."""
__version__ = "0.1.0"
