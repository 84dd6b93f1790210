"""The figures `prunescope bench` prints: each a ratio of two timings taken side by side in one run."""
import platform
import resource
import time

import numpy as np
import torch

from core.io.images import load_image
from core.io.resources import resource_path
from core.methods.attribution import batch_size
from core.methods.gradients import IG_STEPS
from core.pathway.curves import baseline_image, default_batch, rank_image
from core.pathway.engine import Engine
from core.pathway.graph import pathway_graph
from core.progress import run

SLIDER_SPARSITIES = (35.0, 55.0, 75.0, 85.0, 95.0)


def _timed_pair(first, second, repeats: int, device: torch.device) -> tuple[float, float]:
    """Fastest seconds of each of two calls, run in turns after a warm-up, so that load from
    elsewhere on the machine hits both alike."""
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(model, repeats: int = 5, steps: int = 20) -> dict:
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    image = load_image(resource_path("samples", "coffee.png"))
    engine = Engine(model, image)
    # The engine's passes run on the batch-norm-folded module (core.network.folding), made once per
    # model (the Engine above made it). Baselines run on that module too, so that each ratio
    # measures our method against theirs, except the first, which is against the model as given.
    module, x, target = engine.module, engine.x, engine.target

    def plain_forward_backward(net=model.module):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(net(xg)[0, target], xg)

    engine.scores()
    # A pass takes tens of milliseconds, where a busy machine's noise is a few: more turns,
    # so that the fastest of each comes close to what it costs.
    passes = 4 * repeats
    sweep = iter(SLIDER_SPARSITIES * (2 * passes + 2))
    # Each ratio divides the two timings of one pair: load from elsewhere hits both alike.
    plain, slider = _timed_pair(plain_forward_backward, lambda: engine.pathway(next(sweep)), passes, device)
    # what the masks themselves cost: against a plain pass of the folded module
    folded, slider_again = _timed_pair(lambda: plain_forward_backward(module),
                                       lambda: engine.pathway(next(sweep)), passes, device)

    def pathway_from_scratch():
        Engine(model, image).pathway(70.0)

    def captum_ig():
        from captum.attr import IntegratedGradients

        IntegratedGradients(module).attribute(x, target=target, n_steps=IG_STEPS,
                                             internal_batch_size=batch_size(module, x, IG_STEPS))

    plain_again, scratch = _timed_pair(plain_forward_backward, pathway_from_scratch, repeats, device)
    scratch_again, ig = _timed_pair(pathway_from_scratch, captum_ig, max(1, repeats // 2), device)

    attr = np.abs(engine.pathway(70.0).map)
    inputs = _perturbed_inputs(x, attr, steps, ends=False)

    def same_forwards_batched():
        with torch.no_grad():
            for chunk in inputs.split(default_batch(device)):
                torch.softmax(module(chunk), dim=1)[:, target]

    curves, forwards = _timed_pair(lambda: run(engine.iter_curves("pathway-gradient", attr, steps)),
                                   same_forwards_batched, repeats, device)
    curves_again, loop = _timed_pair(lambda: run(engine.iter_curves("pathway-gradient", attr, steps)),
                                     lambda: _curves_one_image_per_step(module, x, attr, target, steps),
                                     max(1, repeats // 2), device)

    engine_memory = _peak_memory_mb(device)  # before the graph's and evaluate's own: the goal is the engine's
    # The pathway graph (explain --graph, the app's graph tab), in plain passes of the folded module:
    # it costs one batched pass per layer pair, a copy of the input per downstream node.
    folded_again, graph = _timed_pair(lambda: plain_forward_backward(module), lambda: pathway_graph(engine, 70.0),
                                      max(1, repeats // 2), device)
    graph_images = pathway_graph(engine, 70.0).passes

    evaluation, its_forwards, rows = _evaluation_pair(model, image, device)

    return {
        "model": model.name,
        "device": str(device),
        "input": list(x.shape),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "seconds": {
            "plain_forward_backward": plain,
            "folded_forward_backward": folded,
            "sparsity_change_cached_scores": min(slider, slider_again),
            "pathway_from_scratch": min(scratch, scratch_again),
            "captum_integrated_gradients_50": ig,
            "deletion_insertion_curves": min(curves, curves_again),
            "same_forwards_same_inputs_batched": forwards,
            "curves_one_image_per_step_loop": loop,
            "evaluate_one_image": evaluation,
            "evaluate_one_image_its_forwards_batched": its_forwards,
            "pathway_graph": graph,
        },
        "pathway_graph_images_through_the_network": graph_images,
        "evaluate_rows": rows,
        "ratios": {
            "sparsity_change_vs_forward_backward": slider / plain,
            "sparsity_change_vs_folded_forward_backward": slider_again / folded,
            "captum_ig50_vs_pathway_from_scratch": ig / scratch_again,
            "pathway_from_scratch_vs_forward_backward": scratch / plain_again,
            "curves_vs_same_forwards_batched": curves / forwards,
            "one_image_per_step_loop_vs_our_batched_curves": loop / curves_again,
            "evaluate_image_vs_its_forwards": evaluation / its_forwards,
            "pathway_graph_vs_folded_forward_backward": graph / folded_again,
        },
        "goals": {"sparsity_change_vs_folded_forward_backward": "<= 1.2",
                  "pathway_from_scratch_vs_forward_backward": "<= 3",
                  "curves_vs_same_forwards_batched": "<= 1.2", "evaluate_image_vs_its_forwards": "<= 1.3",
                  "peak_memory_mb.process_rss": "< 1024"},
        "peak_memory_mb": engine_memory,
        "peak_memory_mb_with_evaluate": _peak_memory_mb(device),
    }


def _evaluation_pair(model, image: np.ndarray, device: torch.device) -> tuple[float, float, dict]:
    """One image's default evaluation (every default method and metric), against the same number
    of forwards, and of forwards with a backward, through the model in batches: what evaluate
    costs beyond the model's own work."""
    from core.evaluation.benchmark import BenchmarkSettings, evaluate_item
    from core.evaluation.forwards import batch_size as forward_batch
    from core.evaluation.metrics import unsupported
    from core.evaluation.sources import Item, prepare

    settings = BenchmarkSettings(target="predicted")
    methods = [m for m in settings.methods if m not in unsupported(settings.methods, model)]
    item = Item(image, None, None, "bench")
    rows = {"forward": 0, "forward_backward": 0}

    def count(_module, args):
        rows["forward_backward" if torch.is_grad_enabled() else "forward"] += args[0].shape[0]

    handle = model.module.register_forward_pre_hook(count)
    try:
        evaluate_item(model, item, methods, settings, keep_maps=False)
    finally:
        handle.remove()
    prepared = prepare(model, item, "predicted")
    x, target = prepared.x, prepared.target
    batch = forward_batch(model.module, x)

    def its_forwards():
        with torch.no_grad():
            for start in range(0, rows["forward"], batch):
                model.module(x.expand(min(batch, rows["forward"] - start), -1, -1, -1))[:, target].sum()
        for start in range(0, rows["forward_backward"], batch):
            xg = x.expand(min(batch, rows["forward_backward"] - start), -1, -1, -1).detach().requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(model.module(xg)[:, target].sum(), xg)

    evaluation, forwards = _timed_pair(lambda: evaluate_item(model, item, methods, settings, keep_maps=False),
                                       its_forwards, 1, device)
    return evaluation, forwards, rows


def _perturbed_inputs(x, attr, steps, ends: bool = True):
    """The 2(S+1) images of the deletion and insertion curves, built up front; without the ends
    (the input and the baseline, which the engine forwards once per image), the 2(S-1) that
    the curves of one more map feed the model."""
    ranks = rank_image(attr, tuple(x.shape[-2:]), device=x.device)
    base = baseline_image(x)
    total = ranks.numel()
    images = []
    for step in range(0 if ends else 1, steps + 1 if ends else steps):
        top = ranks < round(step * total / steps)
        images += [torch.where(top, base, x), torch.where(top, x, base)]
    return torch.cat(images)


def _curves_one_image_per_step(module, x, attr, target, steps):
    """The reference we beat: like Quantus's pixel flipping, one perturbed image per forward,
    for the same deletion and insertion steps as ours."""
    with torch.no_grad():
        return [float(torch.softmax(module(image), dim=1)[0, target])
                for image in _perturbed_inputs(x, attr, steps).split(1)]


def _peak_memory_mb(device: torch.device) -> dict:
    peak = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak
