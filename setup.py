"""Installs optg_jax."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.4.30",
    "jaxlib>=0.4.30",
    "numpy>=1.24",
    "flax>=0.8.5",
    "optax>=0.2.2",
    "orbax-checkpoint>=0.5.20",
    "ml-collections>=0.1.1",
    "clu>=0.0.10",
    "absl-py>=1.0",
    "tensorflow-cpu>=2.15",
    "tensorboard>=2.15",
    "tensorflow-datasets>=4.9",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",  # The study command's plots.
]

TESTS_REQUIRE = ["pytest>=7"]

setuptools.setup(
    name="optg_jax",
    version="0.1.0",
    description=("OptG (Optimizing Gradient-driven Criteria in Network "
                 "Sparsity) for JAX, Flax and optax."),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["optg_jax", "optg_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TESTS_REQUIRE},
    license="Apache-2.0",
)
