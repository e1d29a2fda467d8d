"""kmedimg.evaluation: a trained model and data in; metrics, explanations, reports, exports out.

The library layer under the `kmedimg evaluate / predict / explain / export` commands
(which live in `kmedimg.runs` and `kmedimg.cli`): nothing here knows about run
directories or command lines.

- Metrics: `evaluate` (per task, with stratified-bootstrap intervals), `binary_metrics`,
  `multiclass_metrics`, `multilabel_metrics`, `paired_difference`, `confusion_matrix`,
  `reliability_curve`, `roc_curve`, `curve_band`.
- Operating points: `choose_threshold` on validation, a `Threshold` applied to test.
- Predictions: `predict_dataset` (with test-time augmentation) -> `Predictions`;
  `evaluate_model` = predictions over a split + metrics at a validation-chosen point.
- Explanations: `GradCam` (Grad-CAM, Grad-CAM++), `occlusion_sensitivity`,
  `save_overlay`.
- Reports and exports: `build_report` (`report.html`), `export_model` (`.keras`,
  SavedModel, TFLite, checked with each runtime).

Example:

```python
from kmedimg.evaluation import evaluate_model

result = evaluate_model(model, test, "binary", val_data=val)
result["metrics"]["roc_auc"]  # {"value": 0.93, "ci_low": 0.89, "ci_high": 0.96}
```
"""

from kmedimg.evaluation.bootstrap import stratified_bootstrap_weights
from kmedimg.evaluation.curves import curve_band, roc_curve
from kmedimg.evaluation.export import export_model
from kmedimg.evaluation.gradcam import GradCam, grad_cam, grad_cam_plus_plus
from kmedimg.evaluation.metrics import (
    binary_metrics,
    confusion_matrix,
    evaluate,
    multiclass_metrics,
    multilabel_metrics,
    paired_difference,
    reliability_curve,
)
from kmedimg.evaluation.model_evaluation import evaluate_model
from kmedimg.evaluation.occlusion import occlusion_sensitivity
from kmedimg.evaluation.overlay import save_overlay
from kmedimg.evaluation.prediction import Predictions, predict_dataset
from kmedimg.evaluation.report import build_report
from kmedimg.evaluation.thresholds import Threshold, choose_threshold

__all__ = [
    "GradCam",
    "Predictions",
    "Threshold",
    "binary_metrics",
    "build_report",
    "choose_threshold",
    "confusion_matrix",
    "curve_band",
    "evaluate",
    "evaluate_model",
    "export_model",
    "grad_cam",
    "grad_cam_plus_plus",
    "multiclass_metrics",
    "multilabel_metrics",
    "occlusion_sensitivity",
    "paired_difference",
    "predict_dataset",
    "reliability_curve",
    "roc_curve",
    "save_overlay",
    "stratified_bootstrap_weights",
]
