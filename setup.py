"""ssljax: self-supervised visual pre-training in JAX/Flax.

Lower bounds are the versions the test suite was run with (see README.md).
"""

from setuptools import find_packages, setup

setup(
    name="ssljax",
    version="0.1.0",
    description="Self-supervised visual pre-training (BYOL, DetCon, MoCo, M²T, SaGe, SSLight) "
    "in JAX/Flax on one sharded engine",
    packages=find_packages(include=["ssljax", "ssljax.*"]),
    python_requires=">=3.11",
    license="Apache-2.0",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "absl-py>=2.5.1",
        "numpy>=2.0",
        "tensorflow-cpu>=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=7.1.0",  # imported by tfds 4.9 builders, not declared by it
        "tensorboard>=2.21.0",  # tensorflow-cpu does not ship the summary writer
        "scikit-image>=0.26.0",
        "matplotlib>=3.11.2",  # python -m ssljax.report: the results plots
        "tqdm>=4.70.1",  # evaluation progress bars (also a tfds dependency)
    ],
    extras_require={
        "dev": ["pytest>=9.0.3", "pytest-xdist>=3.8.0", "ruff>=0.17.6", "import-linter>=2.16"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "gpu": ["jax[cuda13]>=0.10.2"],  # NVIDIA driver for CUDA 13
        "gpu-cuda12": ["jax[cuda12]>=0.10.2"],  # older drivers (CUDA 12)
        # python -m ssljax.export and its tests; never imported by training. torch 2.13's
        # CPU wheel has no torchvision that imports beside it (PyPI's torchvision needs
        # the CUDA build's libraries), so these are the CUDA builds, run on the CPU.
        "export": [
            "torch>=2.14.1",
            "torchvision>=0.29.1",
            "timm>=1.0.29",
            "safetensors>=0.8.0",
        ],
        # benchmarks/fh_alternatives.py only: OpenCV's graph segmentation (ximgproc).
        "fh-bench": ["opencv-contrib-python-headless>=5.0.0"],
    },
)
