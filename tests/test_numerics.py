"""Parameter updates: bfloat16 master weights are rounded stochastically and without bias;
float32 ones exactly as optax adds them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from redjax import step


def test_stochastic_rounding_keeps_small_updates_on_average():
    """200 updates of 1e-4 on weights of 1.0 (bfloat16 spacing there: 2^-7): round-to-nearest
    keeps 1.0; stochastic rounding moves the mean to 1.02 within 4 standard errors."""
    w = jnp.ones((4096,), jnp.bfloat16)
    u = {"w": jnp.full((4096,), 1e-4, jnp.float32)}
    add = jax.jit(lambda p, s: step.apply_updates({"w": p}, u, s)["w"])
    assert float(optax.apply_updates({"w": w}, u)["w"][0]) == 1.0  # the problem it solves
    for s in range(200):
        w = add(w, s)
    vals = np.asarray(w, np.float32)
    assert vals.min() >= 1.0 and len(np.unique(vals)) > 3  # spread over bfloat16 neighbours
    stderr = vals.std() / np.sqrt(vals.size)
    assert abs(vals.mean() - 1.02) < 4 * stderr, (vals.mean(), stderr)
    np.testing.assert_array_equal(add(w, 7), add(w, 7))  # the step's key: reproducible


def test_float32_updates_are_exact_and_nonfinite_stays():
    p = {"a": jnp.linspace(-1, 1, 33), "b": jnp.array([1.0, 2.0], jnp.bfloat16)}
    u = {"a": jnp.linspace(0, 1e-3, 33), "b": jnp.array([jnp.inf, 0.0])}
    got = step.apply_updates(p, u, jnp.int32(3))
    np.testing.assert_array_equal(got["a"], optax.apply_updates(p, u)["a"])
    assert got["b"].dtype == jnp.bfloat16 and np.isinf(float(got["b"][0]))
    assert float(got["b"][1]) == 2.0  # exactly representable: no rounding either way
