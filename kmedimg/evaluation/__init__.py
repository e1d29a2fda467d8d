"""kmedimg.evaluation: metrics with confidence intervals, explanations, reports, export.

- `metrics`: per-task metrics, stratified-bootstrap intervals, operating points chosen on
  validation (`choose_threshold`) and applied to test (`evaluate`), calibration.
- `evaluate_model`: predictions over a split (optionally with TTA) -> metrics dict.
- `explain`: Grad-CAM, Grad-CAM++ and occlusion sensitivity.
- `report`: the self-contained `report.html` of a run.
- `predict`, `export`: the `kmedimg predict` / `kmedimg export` commands.
"""

from kmedimg.evaluation.evaluate import evaluate_model, predict_dataset

__all__ = ["evaluate_model", "predict_dataset"]
