"""Make examples/readme_figure.png: the shipped photo and guides made from it by the toolkit.

Only the annotators that need no downloaded weights run here (Canny, the composite), so the figure
can be remade on any machine: ``python examples/make_readme_figure.py``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

import guides
from guides.imaging import load_image

HERE = Path(__file__).resolve().parent


def label(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + 24), "white")
    canvas.paste(image.convert("RGB"), (0, 24))
    ImageDraw.Draw(canvas).text((6, 6), text, fill="black")
    return canvas


def main() -> None:
    photo = load_image(HERE / "photos" / "chelsea.png")
    height, width = photo.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), (width // 3, height // 2 - 10), 0, 0, 360, 255, -1)
    mask = 255 - mask  # white = repaint: everything outside the ellipse
    panels = [
        label(Image.fromarray(photo), "photo (examples/photos/chelsea.png)"),
        label(guides.canny(photo), "guides canny"),
        label(guides.canny(photo, low=50, high=100), "guides canny --low 50 --high 100"),
        label(guides.composite(photo, mask, background="white"), "guides composite photo mask"),
    ]
    figure = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    x = 0
    for panel in panels:
        figure.paste(panel, (x, 0))
        x += panel.width
    figure.save(HERE / "readme_figure.png", optimize=True)


if __name__ == "__main__":
    main()
