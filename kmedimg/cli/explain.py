"""`kmedimg explain MODEL IMAGE... --out DIR`: Grad-CAM / Grad-CAM++ / occlusion overlays."""

import sys
import warnings

from kmedimg.evaluation.gradcam import GradCamWarning
from kmedimg.runs.explain import EXPLAIN_METHODS, explain_run


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "explain", help="Grad-CAM / Grad-CAM++ / occlusion overlays as PNG files",
        description="Writes one PNG per input image: the input in its stored intensities "
                    "and the heatmap over it.")
    parser.add_argument("model", metavar="RUN_OR_MODEL",
                        help="a run directory (uses model.keras) or a .keras file")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files (PNG/JPEG/TIFF, .npy, DICOM) or folders of them")
    parser.add_argument("--out", required=True, help="output folder for the PNG overlays")
    parser.add_argument("--method", default="gradcam", choices=EXPLAIN_METHODS,
                        help="explanation method (default: gradcam)")
    parser.add_argument("--class-index", type=int, default=None,
                        help="class to explain (binary: 1 positive, 0 negative); default: predicted")
    parser.add_argument("--layer", default=None,
                        help="layer to explain instead of the backbone's registered last conv layer")
    parser.set_defaults(handler=_run)


def _run(args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradCamWarning)
        written = explain_run(args.model, args.images, args.out, method=args.method,
                              class_index=args.class_index, layer=args.layer)
    for path in written:
        print(path)
    for warning in caught:
        if issubclass(warning.category, GradCamWarning):
            print(f"kmedimg explain: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return 0
