"""The memory planner: will a clip fit on a GPU, with softmax, context windows or ReHyAt (issue 23).

One job per module: :mod:`.models` (shapes, parameter counts), :mod:`.weights` (bytes per storage
format), :mod:`.memory` (one evaluation's working memory), :mod:`.plan` (per-method peaks, the
choice, the clip state's size).
"""

from .memory import EvaluationMemory, evaluation_memory
from .models import PLAN_MODELS, PlanModel, get_plan_model, plan_model_for_shape
from .plan import PlanRequest, format_plan, plan
from .weights import WEIGHT_FORMATS, weight_bytes

__all__ = [
    "PLAN_MODELS", "WEIGHT_FORMATS", "EvaluationMemory", "PlanModel", "PlanRequest", "evaluation_memory",
    "format_plan", "get_plan_model", "plan", "plan_model_for_shape", "weight_bytes",
]
