"""torch.export programs (FILE.pt2) as modules the engine can run."""
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelError

class ExportedModule(nn.Module):
    """An ExportedProgram's module as the engine needs it: eval()/train() are no-ops (the
    program was exported in the mode it runs in) and a program traced for batch 1 still takes
    batches, one sample at a time."""

    def __init__(self, graph: nn.Module, batch: int | None):
        super().__init__()
        self.graph = graph
        self.batch = batch  # the traced batch size when it is fixed, else None

    def train(self, mode: bool = True):
        self.training = mode  # the program's own modules refuse train()/eval()
        return self

    def forward(self, x):
        if self.batch is None or x.shape[0] == self.batch:
            return self.graph(x)
        return torch.cat([self.graph(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)])


def exported_module(path: Path) -> ExportedModule:
    if not path.is_file():
        raise ModelError(f"{path}: no such torch.export program")
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # bad archives fail in the zip reader, the JSON schema or torch
        raise ModelError(f"{path}: not a torch.export program ({type(err).__name__})") from None
    shapes = [spec for spec in program.graph_signature.input_specs
              if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(shapes) != 1:
        raise ModelError(f"{path}: the program takes {len(shapes)} inputs; a classifier takes one image batch")
    value = next(n for n in program.graph.nodes if n.op == "placeholder"
                 and n.name == shapes[0].arg.name).meta.get("val")
    batch = value.shape[0] if value is not None and isinstance(value.shape[0], int) else None
    return ExportedModule(program.module(), batch)
