"""Streaming accumulators of a dissection's passes: per unit, a quantile threshold from a bounded
sample of activations, the top-activating images, and the intersections and unions with concept
masks. Each sees a batch at a time; none keeps the activations."""
import torch

TOP_IMAGES = 9


class TopValues:
    """The k largest values seen per unit (so the top-quantile threshold is exact)."""

    def __init__(self, units: int, k: int):
        self.k = k
        self.values = torch.empty(units, 0)

    def add(self, values: torch.Tensor) -> None:
        """values: units x M."""
        merged = torch.cat([self.values, values.float().cpu()], dim=1)
        self.values = merged.topk(min(self.k, merged.shape[1]), dim=1, sorted=False).values

    def merge(self, other: "TopValues") -> None:
        self.add(other.values)

    def threshold(self) -> torch.Tensor:
        """The k-th largest value per unit: activations above it are the top quantile."""
        return self.values.min(dim=1).values


class TopImages:
    """Per unit, the n images whose largest activation is greatest: value, image index and
    where in the map. Ties go to the lower image index, so the order does not depend on how
    the images were batched."""

    def __init__(self, units: int, n: int = TOP_IMAGES):
        self.n = n
        self.value = torch.empty(units, 0)
        self.index = torch.empty(units, 0, dtype=torch.long)
        self.where = torch.empty(units, 0, dtype=torch.long)  # flat position in the H x W map

    def add(self, value, index, where) -> None:
        value = torch.cat([self.value, value.float().cpu()], 1)
        index = torch.cat([self.index, index.cpu()], 1)
        where = torch.cat([self.where, where.cpu()], 1)
        by_index = index.argsort(dim=1, stable=True)
        value, index, where = (t.gather(1, by_index) for t in (value, index, where))
        order = value.argsort(dim=1, descending=True, stable=True)[:, :self.n]
        self.value, self.index, self.where = (t.gather(1, order) for t in (value, index, where))

    def add_maps(self, maps: torch.Tensor, index: list[int]) -> None:
        """maps: B x units x H x W of the images numbered `index`."""
        peak, where = maps.flatten(2).max(dim=2)
        index = torch.tensor(index).expand(maps.shape[1], -1)
        self.add(peak.T, index, where.T)

    def merge(self, other: "TopImages") -> None:
        self.add(other.value, other.index, other.where)


class Tally:
    """Integer counts from which every unit's IoU with every concept follows."""

    def __init__(self, units: int, concepts: int, categories: int):
        self.both = torch.zeros(units, concepts, dtype=torch.long)      # unit and concept
        self.unit = torch.zeros(units, categories, dtype=torch.long)    # unit, where category labelled
        self.concept = torch.zeros(concepts, dtype=torch.long)

    def add(self, fired: torch.Tensor, present: list[list[int]], masks: list[torch.Tensor],
            categories: list[list[int]]) -> None:
        """A batch: fired (B x units x pixels, bool); per image the concepts present, their masks
        (K x pixels, bool) and the categories labelled in it."""
        batch, pixels = fired.shape[0], fired.shape[2]
        seen = sorted({c for cs in present for c in cs})
        fired = fired.float()
        if seen:
            column = {c: j for j, c in enumerate(seen)}
            dense = torch.zeros(batch, len(seen), pixels, device=fired.device)
            for b, (cs, m) in enumerate(zip(present, masks)):
                if cs:
                    dense[b, [column[c] for c in cs]] = m.to(dense.dtype)
            # 0/1 products summed in float32 are exact for maps far larger than 112 x 112
            both = torch.bmm(fired, dense.transpose(1, 2)).round().long().sum(0).cpu()
            self.both[:, seen] += both
            self.concept[seen] += dense.sum(dim=(0, 2)).round().long().cpu()
        labelled = torch.zeros(batch, self.unit.shape[1], device=fired.device)
        for b, cats in enumerate(categories):
            labelled[b, cats] = 1.0
        self.unit += (fired.sum(2).T @ labelled).round().long().cpu()

    def merge(self, other: "Tally") -> None:
        self.both += other.both
        self.unit += other.unit
        self.concept += other.concept

    def iou(self, category_of: list[int]) -> torch.Tensor:
        """units x concepts IoU (0 where neither ever appears)."""
        union = self.unit[:, category_of] + self.concept[None, :] - self.both
        return torch.where(union > 0, self.both / union.clamp(min=1), torch.zeros(()))
