"""Shared test set-up: float64 JAX (kernel identities are checked to float64 round-off)."""
import jax

jax.config.update("jax_enable_x64", True)
