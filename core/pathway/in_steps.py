"""The engine's maps in steps, for the app's worker: a method's map, or its pathway version at a
sparsity, computed a step of about step_seconds at a time, so that a slider move waits no longer
than a step (core.methods.library_run runs the calls that cannot be split). A mixin of
core.pathway.engine.Engine, whose state and caches it uses."""
import copy

import numpy as np
import torch

from core.errors import PruneScopeError, UnsupportedMethod
from core.methods import BY_NAME, CLASSIC_METHODS, PATHWAY
from core.methods.library_run import LibraryRun
from core.network.neurons import MaskedForward, MaskedNetwork, unwrapped
from core.pathway.results import PathwayResult
from core.progress import Job, Paused, Progress, pause_if_hurried


class InSteps:
    """Engine's methods that run in steps (the module's docstring)."""

    def iter_attribution(self, method: str, step_seconds: float | None = None,
                         coarse: bool = False) -> Job[np.ndarray]:
        """attribution() of a classic method; with step_seconds, the methods that run in steps
        (Method.in_steps: the gradient sums, and the slow perturbation methods) do, in steps of
        about that long, and a stopped run resumes where it was. coarse: where the method has
        a coarser first map (Method.coarse: fewer passes), that one, kept apart from its own (the
        finished full map is returned instead when there is one)."""
        key = self._key(method)
        spec = self.spec(method) if method in CLASSIC_METHODS else None
        if spec is None or key in self._cache.maps or not step_seconds or not spec.in_steps:
            return self.attribution(method)
        spec = supported(spec, self.model)
        fewer = self._fewer(spec) if coarse else {}
        if fewer:
            if key not in self._cache.coarse:
                first = spec.configured(fewer).stepped(self.model, self._net_of(spec), self.x, self.target,
                                                       step_seconds)
                self._cache.coarse[key] = yield from first.steps(step_seconds)
            return self._cache.coarse[key]
        if key not in self._cache.runs:
            self._cache.runs[key] = spec.stepped(self.model, self._net_of(spec), self.x, self.target, step_seconds)
        self._cache.maps[key] = yield from self._cache.runs[key].steps(step_seconds)
        del self._cache.runs[key]
        return self._cache.maps[key]

    def has_coarse(self, method: str) -> bool:
        """Whether iter_attribution(coarse=True) would give a coarser map than the method's own."""
        return (method in CLASSIC_METHODS and self._key(method) not in self._cache.maps
                and bool(self._fewer(self.spec(method))))

    @staticmethod
    def _fewer(spec) -> dict:
        return {k: v for k, v in spec.coarse.items() if v < spec.params[k]}

    def iter_pathway(self, sparsity: float, mode: str = "global", selector: str = "taylor",
                     method: str = "gradient", step_seconds: float | None = None) -> Job[PathwayResult]:
        """pathway(), in steps of about step_seconds where given, so that other work (the
        slider's live map) goes on between them: the gradient sums a few passes of the pruned
        network at a time, every other method as its library's call on a private copy of the
        pruned network (core.methods.library_run). Not kept: a new sparsity starts again."""
        if not step_seconds or method not in BY_NAME:
            return self.pathway(sparsity, mode, selector, method)
        if BY_NAME[method].one_pass:  # one step, given up in its forward for a slider move
            while True:
                try:
                    return self.pathway(sparsity, mode, selector, method, stop=pause_if_hurried)
                except Paused:  # yielded below: the handler's traceback would keep the forward's tensors
                    pass
                yield Progress(0.0, f"{PATHWAY}{method}")
        if method not in CLASSIC_METHODS or not BY_NAME[method].through_network:
            raise PruneScopeError(f"no pathway version of '{method}'")
        spec = supported(self.spec(method), self.model)
        yield from self.iter_scores(selector)
        factors = self._factors(sparsity, mode, selector)
        kept = self._kept(factors, sparsity, mode, selector)
        if all(k == n for _, k, n in kept):
            return self.pathway(sparsity, mode, selector, method)  # nothing pruned: the method's own map
        if spec.sums:
            forward = self._scaled_forward(factors)
            net = MaskedNetwork(self.module, forward)
            sums = spec.stepped(self.model, net, self.x, self.target, step_seconds)
            forward.stop = pause_if_hurried  # the steps' forwards give up for a slider move (run again)
            attr_map = yield from sums.steps(step_seconds)
            forward.stop = None
            with torch.no_grad():
                logits = net(self.x)
        else:  # its own pathway version (Method.through), on its own copy of the network
            module, model, x, target = self.module, self.model, self.x, self.target
            layer_modules = self._layer_modules

            def build():
                inner, modules = copy.deepcopy((module, layer_modules))
                return MaskedNetwork(inner, MaskedForward(inner, modules, factors))

            run_ = LibraryRun(lambda gated: spec.through(model, unwrapped(gated), gated, x, target), build, x,
                              step_seconds, spec.forwards(model, x), spec.name, detach=not spec.random_draws)
            attr_map, logits = yield from run_.steps(step_seconds)
        return self._result(attr_map, logits, factors, sparsity, mode, selector, kept)


def supported(spec, model):
    """spec (a core.methods.base.Method), if it can run on this model; else UnsupportedMethod saying why."""
    ok, why = spec.supports(model)
    if not ok:
        raise UnsupportedMethod(why)
    return spec
