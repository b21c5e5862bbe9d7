"""Regenerate reference_pairs.npz (run with the project venv): 64x64 uint8 crops of
scikit-image's bundled photographs and distorted versions, as LPIPS test inputs."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from skimage import data


def centre_square(image, size=64):
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BICUBIC))


def main():
    astronaut, chelsea, coffee = (centre_square(f()) for f in (data.astronaut, data.chelsea, data.coffee))
    noise = np.random.default_rng(0).normal(0, 20, astronaut.shape)
    noisy = np.clip(astronaut + noise, 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(astronaut).filter(ImageFilter.GaussianBlur(1.5)))
    np.savez_compressed(
        Path(__file__).with_name("reference_pairs.npz"),
        first=np.stack([astronaut, astronaut, astronaut, coffee]),
        second=np.stack([noisy, blurred, chelsea, chelsea]),
    )


if __name__ == "__main__":
    main()
