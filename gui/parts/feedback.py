"""How the app reports jobs: one line for an error (the status bar, a tab's message line), and
the progress bar, message line and Cancel button of a tab that runs one kind of job."""


def error_message(error: BaseException) -> str:
    """One line for the status bar: our own errors say it all; others get their type."""
    from core.errors import PruneScopeError

    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, PruneScopeError):
        return text
    if is_out_of_memory(error):
        return "out of GPU memory: " + text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_out_of_memory(error: BaseException) -> bool:
    # Checked by name so the GUI thread need not import torch.
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


class JobFeedback:
    """Progress, message and Cancel for a tab that runs one kind of job on the worker.

    The tab sets `job_key` and has `context`, `progress` (a 0..1000 QProgressBar), `message`
    (a QLabel), a `status` signal and `_busy(busy)`; _job_widgets makes the first two with the
    run and Cancel buttons, _add_job_rows lays them out in a form, and the default _busy swaps
    the buttons.
    """

    job_key = ""

    def _job_widgets(self, run_text: str, on_run, message: str) -> None:
        from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton

        self.run_button = QPushButton(run_text)
        self.run_button.clicked.connect(on_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.message = QLabel(message)
        self.message.setWordWrap(True)

    def _add_job_rows(self, form) -> None:
        from PySide6.QtWidgets import QHBoxLayout

        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.message)

    def _busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress.setValue(0)

    def _progressed(self, step) -> None:
        self.progress.setValue(int(1000 * step.done))
        self.message.setText(step.message)

    def _failed(self, error) -> None:
        self._busy(False)
        self.message.setText(error_message(error))
        self.status.emit(error_message(error))

    def cancel(self) -> None:
        self.context.cancel(self.job_key)
        self._busy(False)
        self.message.setText("cancelled")


class KeptRunFeedback(JobFeedback):
    """JobFeedback for a run over a folder whose finished images are kept in its results folder
    (core.evaluation.records): Cancel keeps them and Run goes on from there; at the end the results
    folder is emitted with `finished`, and `overwrite` (start again) is unticked. The job returns
    (results folder, lines of the images that failed)."""

    done_status = ""  # the status bar's line when a run ends

    def _start(self, job, text: str) -> None:
        from gui.parts.worker import PRIORITY_BACKGROUND

        self._busy(True)
        self.message.setText(text)
        self.context.run_job(job, self._done, self._progressed, self._failed, key=self.job_key,
                             priority=PRIORITY_BACKGROUND)

    def cancel(self) -> None:
        super().cancel()
        self.message.setText("cancelled: the finished images are kept; Run goes on from there")

    def _done(self, done) -> None:
        out, errors = done
        self._busy(False)
        self.overwrite.setChecked(False)
        failed = f"; {len(errors)} images failed, first {errors[0]}" if errors else ""
        self.message.setText(f"done: results in {out}{failed}")
        self.status.emit(self.done_status)
        self.finished.emit(out)
