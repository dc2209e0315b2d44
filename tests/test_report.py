"""Tests of sparsity reports."""

import jax.numpy as jnp
import numpy as np

import optg_jax as optg


def test_report_counts_per_layer_and_global():
  masks = {"conv": {"kernel": jnp.array([[True, False], [False, False]]),
                    "bias": None},
           "dense": {"kernel": jnp.ones((3, 4), bool)}}
  report = optg.sparsity_report(masks)
  assert set(report["layers"]) == {"conv/kernel", "dense/kernel"}
  assert report["layers"]["conv/kernel"] == {"kept": 1, "total": 4,
                                             "sparsity": 0.75}
  assert report["layers"]["dense/kernel"]["sparsity"] == 0.0
  assert (report["kept"], report["total"]) == (13, 16)
  assert report["sparsity"] == 1 - 13 / 16


def test_table_lists_layers_and_total():
  masks = {"a": np.zeros((10, 10), bool), "b": np.ones(5, bool)}
  table = optg.sparsity_table(masks)
  lines = table.splitlines()
  assert lines[0].split() == ["layer", "kept", "total", "sparsity"]
  assert lines[2].split() == ["a", "0", "100", "100.00%"]
  assert lines[3].split() == ["b", "5", "5", "0.00%"]
  assert lines[-1].split() == ["all", "prunable", "5", "105", "95.24%"]
  assert optg.sparsity_table(optg.sparsity_report(masks)) == table


def test_empty_report():
  report = optg.sparsity_report({"bias": None})
  assert report == {"layers": {}, "kept": 0, "total": 0, "sparsity": 0.0}
