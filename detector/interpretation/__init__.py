"""Interpretation: the paper's figures (`dnd figures`) and one image's path as a picture (explain)."""

from .explain import path_svg, unusual_layers
from .figures import figures

__all__ = ["figures", "path_svg", "unusual_layers"]
