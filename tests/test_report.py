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
  assert report["layers"]["conv/kernel"] == {
      "kept": 1, "total": 4, "sparsity": 0.75, "units": 2, "dead_units": 1,
      "collapsed": False}
  assert report["layers"]["dense/kernel"]["sparsity"] == 0.0
  assert (report["kept"], report["total"]) == (13, 16)
  assert report["sparsity"] == 1 - 13 / 16
  assert report["collapsed_layers"] == []
  assert report["dead_units"] == {"conv/kernel": 1}


def test_report_finds_collapsed_layers_and_dead_units():
  conv = np.ones((3, 3, 4, 8), bool)
  conv[..., 2] = False  # Output channel 2 has no kept input.
  conv[1, 1, :, 5] = False  # Channel 5 keeps the other 8 taps.
  masks = {"stem": np.zeros((3, 3, 1, 16), bool), "conv": conv,
           "head": np.ones((8, 10), bool)}
  report = optg.sparsity_report(masks)
  assert report["collapsed_layers"] == ["stem"]
  assert report["dead_units"] == {"stem": 16, "conv": 1}
  assert report["layers"]["conv"]["units"] == 8
  assert report["layers"]["head"]["dead_units"] == 0
  lines = optg.sparsity_table(report).splitlines()
  assert lines[2].split() == ["conv", "248", "288", "13.89%", "1/8"]
  assert lines[4].split() == ["stem", "0", "144", "100.00%", "16/16",
                              "COLLAPSED"]

def test_table_lists_layers_and_total():
  masks = {"a": np.zeros((10, 10), bool), "b": np.ones(5, bool)}
  table = optg.sparsity_table(masks)
  lines = table.splitlines()
  assert lines[0].split() == ["layer", "kept", "total", "sparsity", "dead",
                              "units"]
  assert lines[2].split() == ["a", "0", "100", "100.00%", "10/10",
                              "COLLAPSED"]
  assert lines[3].split() == ["b", "5", "5", "0.00%", "0/1"]
  assert lines[-1].split() == ["all", "prunable", "5", "105", "95.24%"]
  assert optg.sparsity_table(optg.sparsity_report(masks)) == table


def test_empty_report():
  report = optg.sparsity_report({"bias": None})
  assert report == {"layers": {}, "kept": 0, "total": 0, "sparsity": 0.0,
                    "collapsed_layers": [], "dead_units": {}}
