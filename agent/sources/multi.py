"""Several inputs feeding one pipeline (``source = { type = "multi", sources = [...] }``).

Each input runs its own runner in its own thread; their frames share the pipeline's queue, so one loaded
model serves them all (and, with ``batch_size`` > 1, infers their frames together). Every frame carries the
name of its input in ``meta["input"]``, which results show as ``source.input``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.config import MultiSource, SourceConfig
from agent.errors import SourceError
from agent.sources.base import Frame
from agent.sources.registry import SourceRunner, make_source

log = logging.getLogger(__name__)


def build_source(cfg: SourceConfig, emit: Callable[[Frame], None], stop: threading.Event) -> SourceRunner:
    """The runner of a pipeline's source: one input's, or the inputs' of a multi source together."""
    if isinstance(cfg, MultiSource):
        return MultiRunner(cfg, emit, stop)
    return make_source(cfg, emit, stop)


class MultiRunner:
    def __init__(self, cfg: MultiSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        self.names = cfg.input_names()
        self._emit = emit
        self.stop = stop
        self.inputs: list[SourceRunner] = [
            make_source(source, self._tagged(name), stop) for source, name in zip(cfg.sources, self.names, strict=True)
        ]
        self.errors: dict[str, BaseException] = {}

    def _tagged(self, name: str) -> Callable[[Frame], None]:
        def emit(frame: Frame) -> None:
            frame.meta["input"] = name
            self._emit(frame)

        return emit

    @property
    def bad_inputs(self) -> int:
        return sum(runner.bad_inputs for runner in self.inputs)

    @property
    def rate_hz(self) -> float:
        """The pipeline-rate command sets every input's rate; this reads the first one's."""
        return self.inputs[0].rate_hz

    @rate_hz.setter
    def rate_hz(self, value: float) -> None:
        for runner in self.inputs:
            runner.rate_hz = value

    def restart(self) -> None:
        for runner in self.inputs:
            runner.restart()

    def run(self) -> None:
        """Until every input has ended (or stop is set). An input that fails is logged and the others go on;
        only when all have failed does the pipeline end with the first one's error."""
        threads = [
            threading.Thread(target=self._run_one, args=(name, runner), name=f"input-{name}", daemon=True)
            for name, runner in zip(self.names, self.inputs, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(self.errors) == len(self.inputs):
            first = next(iter(self.errors.values()))
            raise first
        if self.errors:
            log.warning("inputs %s ended with errors; the others ran to their end", ", ".join(self.errors))

    def _run_one(self, name: str, runner: SourceRunner) -> None:
        try:
            runner.run()
        except Exception as exc:  # one input's failure: logged here, the others keep feeding the model
            self.errors[name] = exc
            what = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
            log.error("input %s stopped: %s", name, what)
