"""trilemma: benchmark LLM serving engines and turn the measurements into capacity and cost.

The pipeline (see DESIGN.md in the docs): workload -> schedule -> client -> records -> metrics
-> sweep/knee -> cost -> report -> compare. This module pins the public API.
"""

from bench._version import __version__
from bench.config import SLO, LengthDist, RunSpec, parse_slos  # noqa: E402
from bench.metrics import summarize  # noqa: E402
from bench.records import RequestRecord  # noqa: E402
from bench.results import load_run  # noqa: E402

__all__ = [
    "__version__",
    "LengthDist",
    "RequestRecord",
    "RunSpec",
    "SLO",
    "load_run",
    "parse_slos",
    "summarize",
]
