"""Installs optg_jax."""

import setuptools

# `import optg_jax`: the transform, top-k, schedules, masks, reports, exports.
INSTALL_REQUIRES = [
    "jax>=0.4.30",
    "jaxlib>=0.4.30",
    "numpy>=1.24",
    "optax>=0.2.2",
]

# The models, input pipelines, training harness and study tools
# (`optg_jax.models`, `.data`, `.harness`, `.studies`, `.train`, `launch/`).
TRAIN_REQUIRE = [
    "flax>=0.8.5",
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

TESTS_REQUIRE = TRAIN_REQUIRE + ["pytest>=7"]

# The documentation site (`docs/`, Sphinx with MyST).
DOCS_REQUIRE = ["sphinx>=7", "myst-parser>=2", "furo>=2023.9.10"]

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
    extras_require={"train": TRAIN_REQUIRE, "test": TESTS_REQUIRE,
                    "docs": DOCS_REQUIRE},
    license="Apache-2.0",
)
