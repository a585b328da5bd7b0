"""Inference backends behind one small interface, one file each (as anomalib's inferencers)."""

from inspection.backends.base import Backend, OutOfMemory

__all__ = ["Backend", "OutOfMemory"]
