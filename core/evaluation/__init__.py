"""How good are the explanations?

metrics: the pointing game, relevance mass, how pixels are ranked, and the reference maps;
faithfulness: ROAD, Average Drop / Increase in Confidence, faithfulness correlation, sparseness
and complexity; leaderboard: the ranked table; sources: the images evaluated (the synthetic
benchmark, an image folder); benchmark: the `evaluate` job (ground-truth metrics,
deletion/insertion, the metrics above, sanity checks); roar: remove and retrain.

Everything is computed per item (image, or ROAR's method x fraction job) with a seed derived from
the item alone, so sharding items over processes (core.runtime.distributed) cannot change a result.
"""

# The optional metrics of `evaluate --metrics` (here, standard library only, for --help): ROAD costs
# most (8 sparse solves per map), then faithfulness correlation (40 forwards).
EXTRA_METRICS = ("road", "confidence", "faithfulness", "complexity")
