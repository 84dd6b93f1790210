"""The pathway graph (core.pathway.graph): known answers on a network whose routes its weights fix."""
import json

import numpy as np
import pytest
import torch
from conftest import photo_path
from torch import nn

from core.errors import PruneScopeError
from core.models.loading import LoadedModel
from core.pathway.engine import Engine
from core.pathway.graph import PathwayGraph, graph_layers, pathway_graph

COLOURS = ("red", "green", "blue")
MIXTURES = ("yellow", "cyan", "magenta")  # red+green, green+blue, red+blue


class Mixer(nn.Module):
    """Units for red, green and blue (each passes its colour channel), units for their mixtures
    (each adds two colour units), and a class per mixture that reads its unit alone."""

    def __init__(self):
        super().__init__()
        self.colours = nn.Conv2d(3, 3, 1)
        self.mixtures = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.colours.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.colours.bias.zero_()
            mix = torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 0, 1]])
            self.mixtures.weight.copy_(mix.view(3, 3, 1, 1))
            self.mixtures.bias.zero_()
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.head(self.relu2(self.mixtures(self.relu1(self.colours(x)))).mean((2, 3)))


def mixer_engine(rgb):
    model = LoadedModel("mixer", Mixer().eval().requires_grad_(False), torch.device("cpu"), list(MIXTURES), 8, 8,
                        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "")
    x = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    return Engine.from_tensor(model, x, fold=False)


@pytest.mark.parametrize("rgb, mixture, colours", [((1, 1, 0), "yellow", ("red", "green")),
                                                   ((0, 1, 1), "cyan", ("green", "blue")),
                                                   ((1, 0, 1), "magenta", ("red", "blue"))])
def test_the_graph_follows_the_weights(rgb, mixture, colours):
    engine = mixer_engine(rgb)
    assert engine.prediction.name == mixture
    graph = pathway_graph(engine, 50.0, nodes=3)
    assert graph.layers == ["relu1", "relu2"]
    # its pathway: the two colours it mixes, and its own mixture unit; nothing else is kept
    kept = {(n.layer, n.channel) for n in graph.nodes}
    assert kept == {("relu1", COLOURS.index(c)) for c in colours} | {("relu2", MIXTURES.index(mixture))}
    # each colour feeds the mixture with relevance a * d(mixture)/da = 1 at each of the 64 positions
    assert {(e.source, e.target): e.weight for e in graph.edges} == {
        (f"relu1:{COLOURS.index(c)}", f"relu2:{MIXTURES.index(mixture)}"): 64.0 for c in colours}
    shares = {n.id: n.share for n in graph.nodes}
    assert shares[f"relu2:{MIXTURES.index(mixture)}"] == 1.0
    assert sum(s for i, s in shares.items() if i.startswith("relu1")) == pytest.approx(1.0)
    assert graph.passes == 1


def test_edges_weigh_what_the_upstream_channel_carries():
    engine = mixer_engine((0.5, 2.0, 0.0))  # yellow, with four times as much green as red
    graph = pathway_graph(engine, 0.0, nodes=3)
    weights = {(e.source, e.target): e.weight for e in graph.edges}
    assert weights[("relu1:1", "relu2:0")] == pytest.approx(4 * weights[("relu1:0", "relu2:0")])
    assert weights[("relu1:1", "relu2:0")] == pytest.approx(2.0 * 64)
    # at sparsity 0 the other mixtures are kept nodes, but colours feed them only where they are there
    assert ("relu1:2", "relu2:0") not in weights  # blue is 0: no neuron of it is kept, no node


def test_json_round_trip_and_bad_input(tmp_path):
    graph = pathway_graph(mixer_engine((1, 1, 0)), 50.0)
    data = json.loads(json.dumps(graph.to_json()))
    assert {"id", "layer", "channel", "share"} <= set(data["nodes"][0])
    assert {"source", "target", "weight"} == set(data["edges"][0])
    assert PathwayGraph.from_json(data) == graph
    with pytest.raises(PruneScopeError, match="not a pathway graph"):
        PathwayGraph.from_json({"nodes": [{}]})
    engine = mixer_engine((1, 1, 0))
    with pytest.raises(PruneScopeError, match="no activation layer 'nope'"):
        pathway_graph(engine, 50.0, layer_names=["nope"])
    with pytest.raises(PruneScopeError, match="at least one node"):
        pathway_graph(engine, 50.0, nodes=0)


def test_graph_layers_spread_over_the_spatial_layers():
    from core.network.neurons import Layer

    layers = [Layer(f"l{i}", "relu", (4, 8, 8)) for i in range(20)] + [Layer("fc", "relu", (16,))]
    assert graph_layers(layers, 6) == [0, 4, 8, 11, 15, 19]
    assert graph_layers(layers[:3], 6) == [0, 1, 2]
    with pytest.raises(PruneScopeError, match="spatial maps"):
        graph_layers(layers[-1:])


@pytest.mark.slow
def test_explain_writes_the_graph_of_a_real_photo(tmp_path, capsys):
    from main import main

    photo = tmp_path / "coffee.png"
    photo.write_bytes(photo_path("coffee.png").read_bytes())
    assert main(["explain", str(photo), "--out", str(tmp_path / "out"), "--methods", "pathway-gradient",
                 "--graph", "--graph-nodes", "4", "--steps", "2", "--quiet"]) == 0
    data = json.loads((tmp_path / "out" / "coffee" / "pathway_graph.json").read_text())
    assert data["class"] == "espresso" and len(data["layers"]) == 6
    assert len(data["nodes"]) == 24 and len(data["edges"]) == 5 * 16
    assert all(0 < n["share"] <= 1 for n in data["nodes"]) and data["passes"] == 5 * 4
    assert (tmp_path / "out" / "coffee" / "pathway_graph.png").stat().st_size > 20_000
    assert np.isfinite([e["weight"] for e in data["edges"]]).all()
