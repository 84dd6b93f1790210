"""How good are the explanations?

metrics: the pointing game, relevance mass, how pixels are ranked, and the reference maps;
sources: the images evaluated (the synthetic benchmark, an image folder); benchmark: the
`evaluate` job (ground-truth metrics, deletion/insertion, sanity checks); roar: remove and retrain.

Everything is computed per item (image, or ROAR's method x fraction job) with a seed derived from
the item alone, so sharding items over processes (core.distributed) cannot change a result.
"""
