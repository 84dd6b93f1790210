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


# --- across images: pathways ----------------------------------------------------------------------

def mixer_model():
    return LoadedModel("mixer", Mixer().eval().requires_grad_(False), torch.device("cpu"), list(MIXTURES), 8, 8,
                       (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "")


def mixture_source(per_class: int = 3):
    """Images of one mixture each (its two colours at random strengths), labelled with it."""
    from core.evaluation.sources import Item, Source

    colours = {0: (0, 1), 1: (1, 2), 2: (0, 2)}

    def load(i: int) -> Item:
        label = i % 3
        rgb = np.zeros((8, 8, 3), np.uint8)
        for channel, value in zip(colours[label], np.random.default_rng(i).uniform(120, 250, 2)):
            rgb[..., channel] = int(value)
        return Item(rgb, label, None, f"{MIXTURES[label]}/{i}")

    return Source("mixtures", 3 * per_class, load, False, list(MIXTURES))


def test_a_class_pathway_holds_exactly_its_units_and_classes_overlap_within():
    from core.evaluation.pathways import PathwaySettings, iter_pathways
    from core.progress import run

    summary = run(iter_pathways(mixer_model(), mixture_source(), PathwaySettings(9, 50.0, target="label", nodes=3)))
    assert summary["images"] == 9 and not summary["errors"]
    for mixture, colours in (("yellow", (1, 1, 0)), ("cyan", (0, 1, 1)), ("magenta", (1, 0, 1))):
        frequency = summary["classes"][mixture]["frequency"]
        assert frequency["relu1"] == list(map(float, colours))  # its two colour units, in every image
        assert frequency["relu2"] == [float(m == mixture) for m in MIXTURES]  # its own mixture unit alone
        graph = summary["classes"][mixture]["graph"]
        assert {e["target"] for e in graph["edges"]} == {f"relu2:{MIXTURES.index(mixture)}"}
    overlap = summary["overlap"]
    assert overlap["within_pairs"] == 9 and overlap["between_pairs"] == 27
    # one class: the same units (shares vary with the strengths); two classes: one colour in common
    assert overlap["within_class"] > 0.8 > 0.5 > overlap["between_class"] > 0.1


def test_overlap_is_the_score_weighted_jaccard():
    from core.evaluation.pathways import overlap_matrix

    a = {"l1": np.array([0.5, 0.5, 0.0]), "l2": np.array([1.0, 0.0])}
    b = {"l1": np.array([0.0, 0.5, 0.5]), "l2": np.array([1.0, 0.0])}
    # halves of each layer: min sums 0.25 + 0.5, max sums 0.75 + 0.5
    np.testing.assert_allclose(overlap_matrix([a, b, a]), [[1, 0.6, 1], [0.6, 1, 0.6], [1, 0.6, 1]])


@pytest.mark.slow
def test_pathways_cli_writes_its_files_goes_on_where_it_stopped_and_refuses_other_settings(tmp_path, capsys):
    from main import main

    folder = tmp_path / "photos"
    for label, names in (("espresso", ("coffee.png",)), ("tabby", ("chelsea.png",)), ("missile", ("rocket.jpg",))):
        (folder / label).mkdir(parents=True)
        for name in names:
            (folder / label / name).write_bytes(photo_path(name).read_bytes())
    out = tmp_path / "out"
    base = ["pathways", "--dataset", str(folder), "--out", str(out), "--graph-nodes", "4", "--quiet"]
    assert main([*base, "--images", "2"]) == 0
    assert len(list((out / "records").glob("*.npz"))) == 2
    first = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.npz")}
    assert main([*base, "--images", "3"]) == 0  # the first two are read back, not computed
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.npz") if p.name in first} == first
    data = json.loads((out / "pathways.json").read_text())
    assert data["images"] == 3 and set(data["classes"]) == {"espresso", "Egyptian cat", "missile"}  # predicted
    layer = next(iter(data["classes"]["espresso"]["frequency"]))
    assert len(data["classes"]["espresso"]["frequency"][layer]) == 32  # Lite0's stem: a value per channel
    assert data["overlap"]["within_class"] is None and 0 < data["overlap"]["between_class"] < 1
    assert np.load(out / "overlap.npy").shape == (3, 3) and (out / "pathways.png").stat().st_size > 20_000
    capsys.readouterr()
    assert main([*base, "--images", "3", "--sparsity", "50"]) == 2
    assert "holds a run with another sparsity" in capsys.readouterr().err


def test_units_labelled_with_a_class_s_object_are_counted_in_its_pathway_and_the_others():
    from types import SimpleNamespace

    from core.evaluation.pathways import PathwaySettings, concept_alignment, iter_pathways
    from core.progress import run

    summary = run(iter_pathways(mixer_model(), mixture_source(), PathwaySettings(9, 50.0, target="label", nodes=3)))
    units = [SimpleNamespace(unit=i, category="object", concept=m) for i, m in enumerate(MIXTURES)]
    units.append(SimpleNamespace(unit=0, category="colour", concept="yellow"))  # not an object: left out
    dissection = SimpleNamespace(layers=[SimpleNamespace(name="relu2", detectors=lambda: units),
                                         SimpleNamespace(name="relu1", detectors=lambda: [])])
    assert concept_alignment(summary, dissection) == {
        "relu2": {"units": 3, "own_class": 1.0, "other_classes": 0.0}}


MIXER_FILE = '''
import torch
from torch import nn


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.colours, self.mixtures, self.head = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Linear(3, 3)
        with torch.no_grad():
            self.colours.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.mixtures.weight.copy_(torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 0, 1]]).view(3, 3, 1, 1))
            self.head.weight.copy_(torch.eye(3))
            for layer in (self.colours, self.mixtures, self.head):
                layer.bias.zero_()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.head(self.relu2(self.mixtures(self.relu1(self.colours(x)))).mean((2, 3)))


def build():
    return Mixer()
'''


def test_a_class_pathway_becomes_a_model_that_keeps_its_class_alone(tmp_path, capsys):
    """pathways on a folder of mixtures, then prune --class-pathway: the yellow model keeps red, green
    and yellow, and agrees with the original on yellow images only."""
    from PIL import Image

    from main import main

    (tmp_path / "mixer.py").write_text(MIXER_FILE)
    (tmp_path / "names.txt").write_text("\n".join(MIXTURES))
    source = mixture_source(4)
    for i in range(source.count):
        item = source.load(i)
        (tmp_path / "photos" / MIXTURES[item.label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(item.rgb).save(tmp_path / "photos" / f"{item.name}.png")
    model = ["--model", f"{tmp_path / 'mixer.py'}:build", "--labels", str(tmp_path / "names.txt"),
             "--input-size", "8", "--resize", "8", "--mean", "0,0,0", "--std", "1,1,1", "--device", "cpu"]
    assert main(["pathways", "--dataset", str(tmp_path / "photos"), "--out", str(tmp_path / "pw"), "--target",
                 "label", "--sparsity", "50", "--graph-nodes", "3", "--quiet", *model]) == 0
    capsys.readouterr()
    out = tmp_path / "yellow.pt"
    assert main(["prune", "--class-pathway", "yellow", "--from", str(tmp_path / "pw" / "pathways.json"),
                 "--out", str(out), "--json", str(tmp_path / "yellow.json"), "--quiet", *model]) == 0
    printed = capsys.readouterr().out
    assert "relu1 2/3, relu2 1/3" in printed
    assert "100.0% on the class's 4 images, 0.0% on the other classes' 8" in printed
    state = torch.load(out, weights_only=True)["state_dict"]  # physically smaller, as prune writes it
    assert state["colours.weight"].shape == (2, 3, 1, 1) and state["mixtures.weight"].shape == (1, 2, 1, 1)
    assert state["head.weight"].shape == (3, 1)
    data = json.loads((tmp_path / "yellow.json").read_text())
    assert data["agreement_own_class"] == 1.0 and data["after"]["params"] < data["before"]["params"]
    assert main(["prune", "--class-pathway", "grey", "--from", str(tmp_path / "pw" / "pathways.json"),
                 "--out", str(out), "--quiet", *model]) == 2
    assert "no class 'grey'" in capsys.readouterr().err


def test_graph_nodes_carry_the_concepts_of_a_dissection_and_auto_sparsity_stays_in_tolerance():
    from types import SimpleNamespace

    from core.dissection.units import graph_concepts
    from core.evaluation.pathways import AUTO, PathwaySettings, iter_pathways
    from core.progress import run

    graph = pathway_graph(mixer_engine((1, 1, 0)), 50.0, nodes=3)
    detectors = [SimpleNamespace(unit=0, concept="red paint"), SimpleNamespace(unit=2, concept="blue sky")]
    dissection = SimpleNamespace(layers=[SimpleNamespace(name="relu1", detectors=lambda: detectors)])
    assert graph_concepts(dissection, graph) == {"relu1:0": "red paint"}  # blue is not in the pathway
    summary = run(iter_pathways(mixer_model(), mixture_source(1),
                                PathwaySettings(3, AUTO, tolerance=0.05, target="label", nodes=3)))
    for name in MIXTURES:
        graph = summary["classes"][name]["graph"]
        assert 0 < graph["sparsity"] < 100 and {n["layer"] for n in graph["nodes"]} == {"relu1", "relu2"}
