"""bench/grad_spikes.py: the per-term summary attributes spikes to the term with the largest gradient norm."""

import importlib.util

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("grad_spikes", REPO / "bench" / "grad_spikes.py")
grad_spikes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grad_spikes)


def test_summary_names_the_term_that_dominates_spikes():
    rng = np.random.default_rng(0)
    n = 200
    log = pd.DataFrame({"step": np.arange(1, n + 1), "grad_norm_ncc": rng.uniform(0.5, 2, n),
                        "grad_norm_ce": rng.uniform(0.5, 2, n)})
    spikes = [10, 50, 120]
    log.loc[spikes, "grad_norm_ce"] = [500.0, 80.0, 3000.0]
    log.loc[77, "grad_norm_ncc"] = 5.0  # large for ncc, but not a spike of the total
    log["grad_norm"] = np.hypot(log["grad_norm_ncc"], log["grad_norm_ce"])
    s = grad_spikes.summarise(log, spike=50).set_index("term")
    assert list(s.index) == ["ncc", "ce"]
    assert s.loc["ce", "largest_at_spikes"] == 1.0 and s.loc["ncc", "largest_at_spikes"] == 0.0
    assert s.loc["ce", "max"] == 3000.0 and s.loc["ce", "median_at_spikes"] == 500.0
    assert s.loc["ncc", "max"] == 5.0


def test_summary_needs_term_columns():
    with pytest.raises(ValueError, match="log_term_grad_norms"):
        grad_spikes.summarise(pd.DataFrame({"step": [1], "grad_norm": [1.0]}), spike=50)
