"""The added evaluation metrics: known answers, parity with Quantus, and the leaderboard's ranks."""
import numpy as np
import pytest
import torch
from conftest import installed
from torch import nn

from core.evaluation.faithfulness import complexity, confidence, faithfulness_correlation, road, sparseness
from core.evaluation.leaderboard import bootstrap_ci, rows, write_csv


class Linear(nn.Module):
    """Logit c = sum(w_c * x): removing a pixel subset (to 0) lowers the logit by exactly the
    input x gradient attribution summed over it."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(classes, 3, size, size), requires_grad=False)

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.w)


def test_faithfulness_correlation_is_one_for_an_exact_attribution_and_low_for_noise():
    model, x = Linear(), torch.randn(1, 3, 16, 16)
    exact = (model.w[1] * x[0]).sum(0).numpy()
    assert faithfulness_correlation(model, x, exact, 1, runs=40) == pytest.approx(1.0, abs=1e-6)
    noise = np.random.default_rng(0).random((16, 16))
    assert abs(faithfulness_correlation(model, x, noise, 1, runs=40)) < 0.5


def test_sparseness_and_complexity_equal_quantus():
    quantus = installed("quantus")
    rng = np.random.default_rng(0)
    # signed maps too: both read the magnitude
    maps = [rng.random((8, 8)) ** 4, np.ones((8, 8)), np.eye(8), rng.standard_normal((8, 8)),
            rng.random((8, 8)) - 0.7]
    x = np.zeros((len(maps), 1, 8, 8), np.float32)
    a = np.stack([m / np.abs(m).max() for m in maps])[:, None].astype(np.float32)
    y = np.zeros(len(maps), int)
    for ours, metric in ((sparseness, quantus.Sparseness), (complexity, quantus.Complexity)):
        theirs = metric(disable_warnings=True, display_progressbar=False)(
            model=None, x_batch=x, y_batch=y, a_batch=a.copy(), channel_first=True)
        np.testing.assert_allclose([ours(m) for m in maps], theirs, rtol=1e-5, atol=1e-12)
    assert sparseness(np.eye(8)) > sparseness(np.ones((8, 8)))
    assert complexity(np.eye(8)) < complexity(np.ones((8, 8))) == pytest.approx(np.log(64))


def test_average_drop_and_increase_in_confidence_known_answers():
    model, x = Linear(), torch.randn(1, 3, 16, 16)
    y = float(torch.softmax(model(x), 1)[0, 1])
    # a flat map scales to all 0: the input becomes all 0, every logit 0, p = 1/3
    drop, increase = confidence(model, x, np.ones((16, 16)), 1)
    assert drop == pytest.approx(100 * max(0.0, y - 1 / 3) / y) and increase == float(1 / 3 > y)
    # a map that is 1 everywhere but on the diagonal keeps the input almost whole
    drop, _ = confidence(model, x, 1 - np.eye(16), 1)
    assert drop < 30.0


def test_road_removes_the_evidence_a_good_map_names():
    model, x = Linear(), torch.randn(1, 3, 16, 16)
    exact = (model.w[1] * x[0]).sum(0).numpy()
    good_morf, good_lerf = road(model, x, exact, 1)
    bad_morf, bad_lerf = road(model, x, -exact, 1)
    assert good_morf < bad_morf and good_lerf > bad_lerf


def test_leaderboard_ranks_by_the_mean_of_per_metric_ranks(tmp_path):
    summary = {"a": {"deletion_auc": 0.1, "insertion_auc": 0.9},
               "b": {"deletion_auc": 0.2, "insertion_auc": 0.8},
               "c": {"deletion_auc": 0.15, "insertion_auc": 0.95, "deletion_auc_ci": [0.1, 0.2]}}
    metrics, table = rows(summary)
    assert metrics == ["deletion_auc", "insertion_auc"]
    assert [(r["method"], r["rank"]) for r in table] == [("a", 1), ("c", 1), ("b", 3)]
    path = write_csv(tmp_path / "leaderboard.csv", metrics, table)
    header, first = path.read_text().splitlines()[:2]
    assert header.split(",")[0] == "method" and header.endswith("mean_rank,rank")
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0 and bootstrap_ci([]) is None


def test_faithfulness_correlation_equals_quantus_where_its_subsets_are_pixels():
    """Quantus draws its subsets among the input's values (channel x pixel); on one channel those
    are the pixels our subsets are drawn from, so the two estimate the same correlation (with
    other random subsets: within three standard errors at 3000 runs)."""
    quantus = installed("quantus")
    model = Linear(classes=3, size=16).eval()
    with torch.no_grad():
        model.w = nn.Parameter(model.w[:, :1].clone(), requires_grad=False)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    exact = (model.w[1] * x[0]).sum(0).numpy()
    rng = np.random.default_rng(2)
    for noise in (1.0, 3.0):
        values = exact + noise * np.abs(exact).mean() * rng.standard_normal(exact.shape)
        ours = faithfulness_correlation(model, x, values, 1, seed=0, runs=3000)
        np.random.seed(0)  # Quantus draws from numpy's global generator
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=3000, subset_size=1, perturb_baseline=0.0, abs=False, normalise=False,
            similarity_func=quantus.similarity_func.correlation_pearson, return_aggregate=False,
            disable_warnings=True, display_progressbar=False)
        theirs = metric(model=model, x_batch=x.numpy(), y_batch=np.array([1]), softmax=False,
                        a_batch=values[None, None].astype(np.float32), channel_first=True, device="cpu")[0]
        assert ours == pytest.approx(theirs, abs=0.06)
