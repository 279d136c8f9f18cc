"""geo3d: cache frozen 3D-geometry tokens once, train VLA policies on them many times."""

__version__ = "0.1.0"
