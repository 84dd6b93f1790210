"""The order statistics of a threshold on neuron scores: which neurons a sparsity keeps, for every
sparsity after one ranking. Ranking holds one selector's scores; each sparsity is then a lookup and
a comparison, where sorting millions of scores again would cost a slider move its time."""
import math
from functools import cached_property

import numpy as np
import torch

from core.network.neurons import Layer


class _Group:
    """The neurons one threshold ranks (all layers pooled, or one layer), flat. Scores are >= 0
    and often exactly 0 (on the embedded model half of them), so the zero and non-zero scores
    are ranked apart: the zero ones once and for all (_zero_rank), the others by their order
    statistics (_Order).

    Exact order: dead neurons (a = 0) first, then the other zero scores by |a| (live but
    gradient-blocked, e.g. saturated ReLU6), then the non-zero scores; remaining ties (equal
    values) by position. The paper's rule instead prunes every score at or below the threshold.
    """

    def __init__(self, scores: torch.Tensor, magnitudes: torch.Tensor, sizes: list[int]):
        self.scores, self.magnitudes, self.sizes = scores, magnitudes, sizes
        self.zeros = int(torch.count_nonzero(scores == 0))  # count_nonzero(scores) took twice as long
        self._nonzero: _Order | None = None
        self._live_ranked = False

    @cached_property
    def _zero_rank(self) -> torch.Tensor:
        """Each zero score's place in the exact order, from 1: the dead neurons by position,
        then the live ones by |a| and position (added when first needed: _rank_live); the
        non-zero scores after them all. Any sparsity below the zero scores' share is then one
        comparison: the slider's moves there took ten times as long, gathering the first k of
        millions of tied neurons each time."""
        kind = torch.int32 if self.scores.numel() < torch.iinfo(torch.int32).max else torch.int64
        dead = (self.scores == 0) & (self.magnitudes == 0)
        # the dead ones' places by a running count, in place: no index per neuron (millions)
        rank = torch.cumsum(dead, 0, dtype=kind)
        self._dead = int(rank[-1]) if rank.numel() else 0
        rank.masked_fill_(~dead, torch.iinfo(kind).max)
        return rank

    def _rank_live(self) -> None:
        """The live zero scores' places, after the dead ones', written into _zero_rank: a sort,
        of |a| (40 ms on the embedded model), that sparsities below the dead share never need."""
        rank = self._zero_rank
        live = ((self.scores == 0) & (self.magnitudes != 0)).nonzero().squeeze(1)
        live = live[torch.sort(self.magnitudes[live], stable=True).indices]
        rank[live] = torch.arange(self._dead + 1, self.zeros + 1, dtype=rank.dtype, device=rank.device)
        self._live_ranked = True

    def _pruned(self, sparsity: float) -> int:
        return math.floor(sparsity / 100.0 * self.scores.numel())

    def _cut(self, k: int) -> tuple[float, int, int]:
        """The k-th smallest score (from 1) when it is not zero, how many non-zero scores are
        smaller and how many equal it."""
        if self._nonzero is None:
            self._nonzero = _Order(self.scores, self.zeros, self.sizes)
        return self._nonzero.at(k - self.zeros - 1)

    def kept(self, sparsity: float, ties: str, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """Flat: the neurons left after pruning sparsity % as 1, as dtype: bool, or the floats
        a masked forward multiplies by. One comparison over the group, written straight in dtype
        (and a second where a tie straddles the cut): this runs on every slider move."""
        k, zeros = self._pruned(sparsity), self.zeros
        if k <= 0:
            return torch.ones_like(self.scores, dtype=dtype)
        out = torch.empty_like(self.scores, dtype=dtype)
        if k <= zeros:  # only zero scores go: the paper's rule takes them all
            if ties == "paper":
                return torch.ne(self.scores, 0, out=out)
            rank = self._zero_rank
            if k > self._dead and not self._live_ranked:
                self._rank_live()
            return torch.gt(rank, k, out=out)
        # some non-zero scores go: under either rule, by score
        cut, below, equal = self._cut(k)
        if ties == "paper" or zeros + below + equal <= k:
            return torch.gt(self.scores, cut, out=out)
        kept = self.scores > cut  # the cut falls inside a tie: its first ones go
        kept |= _all_but_first(self.scores == cut, k - zeros - below)
        return kept.to(dtype)

    def counts(self, sparsity: float, ties: str) -> list[int] | None:
        """How many neurons of each layer kept() keeps, where that is known without counting
        them; else None. A sum over the kept neurons costs a thirtieth of a pass, on every move."""
        k, zeros, n = self._pruned(sparsity), self.zeros, self.scores.numel()
        if k <= 0:
            return list(self.sizes)
        one_layer = len(self.sizes) == 1
        if k <= zeros:
            if one_layer:
                return [n - k] if ties == "exact" else [n - zeros]
            # the paper's rule keeps the non-zero scores (all of them above 0)
            return self._nonzero.above(0.0) if ties == "paper" and self._nonzero else None
        cut, below, equal = self._cut(k)
        if ties == "exact" and zeros + below + equal > k:
            return [n - k] if one_layer else None
        if one_layer:
            return [n - zeros - below - equal]
        return self._nonzero.above(cut)


class _Order:
    """Order statistics of a group's non-zero scores (the zero ones rank below them all). The
    first request selects (_select: no sort), so that an image's first map waits
    for no sort; a new one sorts them once (numpy's sort: torch's took 3x as long), so that the
    slider's later moves are binary searches. The sort is of each layer's scores, then of all,
    so that the kept counts are a search per layer too; on the embedded model it takes as long
    as one sort of every score did."""

    def __init__(self, scores: torch.Tensor, zeros: int, sizes: list[int]):
        self._scores, self._zeros, self._sizes = scores, zeros, sizes
        self._sorted: np.ndarray | None = None
        self._layers: list[np.ndarray] | None = None
        self._last: tuple[int, tuple[float, int, int]] | None = None  # a request asked again

    def at(self, index: int) -> tuple[float, int, int]:
        """The index-th smallest non-zero score (from 0), how many non-zero scores are smaller
        and how many equal it."""
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._last is not None and self._sorted is None:
            values = _comparable(self._scores).cpu().numpy()
            self._layers = [np.sort(v[v != 0]) for v in np.split(values, np.cumsum(self._sizes)[:-1])]
            # numpy's stable sort (timsort) merges the layers' sorted runs: half the time of a sort
            self._sorted = (self._layers[0] if len(self._layers) == 1
                            else np.sort(np.concatenate(self._layers), kind="stable"))
        if self._sorted is None:
            cut, below, equal = select(_comparable(self._scores), self._zeros + index)
            found = cut, below - self._zeros, equal
        else:
            cut = self._sorted[index]
            below = int(np.searchsorted(self._sorted, cut, "left"))
            found = float(cut), below, int(np.searchsorted(self._sorted, cut, "right")) - below
        self._last = index, found
        return found

    def above(self, cut: float) -> list[int] | None:
        """How many scores of each layer are above cut, once they are sorted; else None."""
        if self._layers is None:
            return None
        value = self._sorted.dtype.type(cut)  # in the sorted values' type: exact, and no copy
        return [len(v) - int(np.searchsorted(v, value, "right")) for v in self._layers]


SAMPLE = 1 << 14  # values drawn to bracket a rank (select)


def _comparable(values: torch.Tensor) -> torch.Tensor:
    """Values numpy can sort and a cut compares exactly: float16 and bfloat16 as float32 (every
    one of their values is a float32), the others as they are."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def select(values: torch.Tensor, rank: int) -> tuple[float, int, int]:
    """The rank-th smallest of values (from 0), how many are smaller and how many equal it.

    By sampling (Floyd and Rivest): the quantiles of a random sample bracket the rank, one pass
    counts the values below the bracket and takes those inside it, and only those few are
    selected from. On the embedded model's 6 M neurons this takes 6 ms, where numpy's gather
    and partition took 30 and torch.kthvalue 84; a bracket that misses (about once in 10^4 by
    the margin) is widened to everything."""
    n = values.numel()
    draw = torch.Generator(values.device).manual_seed(0)  # its own: the caller's random state is untouched
    picks = values[torch.randint(n, (SAMPLE,), generator=draw, device=values.device)].sort().values
    at = rank / n * SAMPLE
    margin = 4 * math.sqrt(SAMPLE)  # 4 standard deviations of the sample's rank
    lo = float(picks[int(at - margin)]) if at - margin >= 0 else -math.inf
    hi = float(picks[int(at + margin)]) if at + margin < SAMPLE else math.inf
    within = values <= hi
    below_lo = 0
    if lo > -math.inf:
        at_least = values >= lo
        below_lo = n - int(torch.count_nonzero(at_least))
        within &= at_least
    inside = values[within]
    if not below_lo <= rank < below_lo + inside.numel():
        below_lo, inside = 0, values
    cut = inside.kthvalue(rank - below_lo + 1).values
    below = below_lo + int(torch.count_nonzero(inside < cut))
    return float(cut), below, int(torch.count_nonzero(inside == cut))


def _all_but_first(members: torch.Tensor, count: int) -> torch.Tensor:
    """The True entries of a flat bool tensor after its first `count` (ties go by position)."""
    out = torch.zeros_like(members)
    out[members.nonzero().squeeze(1)[count:]] = True
    return out


class Ranking:
    """One selector's neuron scores (and |a|, for the exact order), flat over all layers, ranked
    once per threshold mode so that each later sparsity is a lookup and a comparison."""

    def __init__(self, scores: torch.Tensor, magnitudes: torch.Tensor, layers: list[Layer]):
        self.flat, self.magnitudes = scores, magnitudes
        self.shapes = [layer.shape for layer in layers]
        self.sizes = [layer.numel for layer in layers]
        self.per_layer = self.per_layer_views(scores)
        self._groups: dict[str, list[_Group]] = {}

    def _ranked(self, mode: str) -> list[_Group]:
        if mode not in self._groups:
            if mode == "global":
                self._groups[mode] = [_Group(self.flat, self.magnitudes, self.sizes)]
            else:
                self._groups[mode] = [_Group(s, a, [n]) for s, a, n in zip(
                    self.flat.split(self.sizes), self.magnitudes.split(self.sizes), self.sizes)]
        return self._groups[mode]

    def kept(self, sparsity: float, mode: str, ties: str = "exact",
             dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """Flat over all layers: the neurons left as 1 (_Group.kept)."""
        groups = self._ranked(mode)
        if mode == "global":
            return groups[0].kept(sparsity, ties, dtype)
        return torch.cat([g.kept(sparsity, ties, dtype) for g in groups])

    def counts(self, sparsity: float, mode: str, ties: str = "exact") -> list[int] | None:
        """How many neurons of each layer kept() keeps, where known without counting (_Group.counts)."""
        counts = [group.counts(sparsity, ties) for group in self._ranked(mode)]
        return None if None in counts else [n for layer in counts for n in layer]

    def per_layer_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [m.view(shape) for m, shape in zip(flat.split(self.sizes), self.shapes)]

    def masks(self, sparsity: float, mode: str, ties: str = "exact") -> list[torch.Tensor]:
        """Bool masks of the kept neurons, one per layer, in the layers' shapes."""
        return self.per_layer_views(self.kept(sparsity, mode, ties))
