"""optg_jax: OptG sparse training (Optimizing Gradient-driven Criteria) in JAX."""
