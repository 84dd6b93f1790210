"""How the Model pruning tab draws its results: the original's and the pruned model's maps side
by side, the channels each layer kept, the sweep's figures, and the before/after summary."""
import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QLabel

from core.io import display
from core.model_pruning.names import LOW_AGREEMENT
from gui.parts.layer_bars import LayerAxis

ORIGINAL, PRUNED = "original", "pruned"  # the two map panels
MAP_OPACITY = 0.6


class ChannelBars(pg.PlotWidget):
    """Per layer, the fraction of channels (or weights) kept; hover names the layer."""

    def __init__(self):
        super().__init__(axisItems={"bottom": LayerAxis()})
        self.setLabel("left", "fraction kept")
        self.setLabel("bottom", "layer (forward order)")
        self.setYRange(0, 1.02, padding=0)
        self.showGrid(y=True, alpha=0.25)
        self.setMenuEnabled(False)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush="#1f77b4")
        self.addItem(self.bars)
        self.rows: list = []
        self.hover = QLabel("")
        self.scene().sigMouseMoved.connect(self._moved)

    def set_rows(self, rows, unit: str) -> None:
        self.rows = list(rows)
        fractions = [kept / total if total else 0.0 for _, kept, total in self.rows]
        self.bars.setOpts(x=np.arange(len(fractions)), height=fractions, width=0.8)
        self.setTitle(f"{unit} kept per layer", size="10pt")
        self.setXRange(-1, max(len(fractions), 1), padding=0)

    def _moved(self, pos) -> None:
        x = self.getPlotItem().vb.mapSceneToView(pos).x()
        i = int(round(x))
        if 0 <= i < len(self.rows):
            name, kept, total = self.rows[i]
            self.hover.setText(f"{name}: {kept} of {total} kept")


def draw_maps(heatmaps, shown) -> None:
    """A gui.pruning.jobs.SideBySide into the tab's HeatmapGrid (panels ORIGINAL and PRUNED)."""
    heatmaps.set_image(shown.view, "<b>image</b>", "")
    heatmaps.set_display(shown.lut, MAP_OPACITY, "absolute", False, display.mode_for(shown.method))
    heatmaps.set_map(ORIGINAL, shown.original, f"{shown.method} · {shown.original_label}")
    heatmaps.set_map(PRUNED, shown.pruned, f"{shown.method} · {shown.pruned_label}")


def show_figures(layout, pngs: dict[str, bytes]) -> None:
    """The sweep's figures (PNG bytes by name) in place of those in layout."""
    while layout.count():
        item = layout.takeAt(0)
        if item.widget() is not None:
            item.widget().deleteLater()
    for name, data in pngs.items():
        label = QLabel()
        pixmap = QPixmap()
        pixmap.loadFromData(data, "PNG")
        label.setPixmap(pixmap)
        label.setObjectName(name)
        layout.addWidget(label)


def sweep_message(result, skipped: dict) -> str:
    """The message line after a sweep: criteria that failed, low agreement, images left out."""
    errors = "; ".join(f"{c}: {why}" for c, why in result.errors.items())
    low = [f"{p.criterion} {p.sparsity:g} %" for p in result.points if p.agreement < LOW_AGREEMENT]
    warning = (f". Warning: agreement on held-out images below {LOW_AGREEMENT:.0%} at {', '.join(low)}"
               if low else "")
    return f"sweep done{' (' + errors + ')' if errors else ''}" + warning + left_out(skipped)


def left_out(skipped: dict) -> str:
    """Calibration images that could not be used, for the message line."""
    if not skipped:
        return ""
    from core.errors import about

    return f"; {len(skipped)} calibration image(s) left out ({about(*next(iter(skipped.items())))})"


def summary_html(report) -> str:
    """Before and after, as a small table."""
    b, a = report.before, report.after

    def row(label, before, after):
        return f"<tr><td>{label}</td><td align=right>{before}</td><td align=right>{after}</td></tr>"

    zeroed = report.surgery.unit == "weights"
    params = (lambda s: f"{s.nonzero:,}") if zeroed else (lambda s: f"{s.params:,}")
    rows = [row("parameters" + (" (non-zero)" if zeroed else ""), params(b), params(a)),
            row("MACs", f"{b.macs / 1e6:.1f} M", f"{a.macs / 1e6:.1f} M"),
            row("latency", f"{b.latency_ms:.1f} ms", f"{a.latency_ms:.1f} ms")]
    if report.accuracy_after is not None:
        rows.append(row("accuracy", f"{report.accuracy_before:.1%}", f"{report.accuracy_after:.1%}"))
    kept = ", ".join(f"{n} ({why})" for n, why in report.surgery.skipped.items()) or "none"
    steps = f" in {report.iterations} steps" if report.iterations > 1 else ""
    return (f"<b>{report.model.name}</b>: {report.criterion}, {report.sparsity_reached:.3g} % of "
            f"{report.surgery.unit}{steps}, {report.mode}<table cellspacing=4>"
            f"<tr><th></th><th>original</th><th>pruned</th></tr>{''.join(rows)}</table>"
            f"{_agreement_html(report)}<br><small>kept whole: {kept}</small>")


def _agreement_html(report) -> str:
    if report.agreement is None:
        return "top-1 agreement: not measured (one image: none left to hold out)"
    held = f"{len(report.held_out)} held-out images, {len(report.calibration)} used to calibrate"
    close = f"top-5 overlap {report.fidelity['top5_overlap']:.2f}, KL to the original {report.fidelity['kl']:.2f}"
    if report.recovery == "none":
        return f"top-1 agreement with the original: <b>{report.agreement:.0%}</b>, {close} ({held})"
    r = report.reconstruction
    refit = "" if not r else ("; reconstruction undone (further from the original)" if r["undone"] else
                              f"; reconstruction refitted {r['refitted']} of {r['layers']} layers")
    return (f"top-1 agreement with the original: {report.agreement_before_recovery:.0%} pruned, "
            f"<b>{report.agreement:.0%}</b> after {report.recovery}, {close} ({report.recovery_s:.0f} s; "
            f"{held}{refit})")
