"""Recreate examples/photos/ from scikit-image's bundled CC0 sample images."""

from __future__ import annotations

from pathlib import Path

import skimage.data
from PIL import Image

HERE = Path(__file__).resolve().parent / "photos"

if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    Image.fromarray(skimage.data.chelsea()).save(HERE / "chelsea.png", optimize=True)
    Image.fromarray(skimage.data.coffee()).save(HERE / "coffee.jpg", quality=92)
