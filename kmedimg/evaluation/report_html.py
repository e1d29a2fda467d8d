"""The HTML and figure helpers of `report.html`: tables, formatted intervals, embedded PNGs.

matplotlib (a core dependency) is imported only when a figure is drawn.
"""

import base64
import html
import io

METRIC_LABELS = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)", "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy", "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity", "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1",
    "brier": "Brier score", "ece": "Expected calibration error",
    "subset_accuracy": "Subset accuracy (all labels right)",
}

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f4f5f7;line-height:1.45}
main{max-width:1060px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:4px 0 2px}h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;
border-bottom:2px solid #e3e6eb}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5b6475;font-size:14px;margin-bottom:14px}
table{border-collapse:collapse;font-size:14px;margin:6px 0 10px}
th,td{padding:5px 12px;border-bottom:1px solid #e6e8ec;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f1f3f6;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0 4px}
.card{border:1px solid #dde1e7;border-radius:8px;padding:10px 16px;min-width:150px}
.card .v{font-size:24px;font-weight:600}.card .l{font-size:12px;color:#5b6475}
.card .ci{font-size:12px;color:#5b6475}
img{max-width:100%;height:auto}figure{margin:8px 0 16px}
figcaption{font-size:13px;color:#5b6475;margin-top:2px}
pre{background:#f6f8fa;border:1px solid #e3e6eb;border-radius:6px;padding:10px;font-size:12px;
overflow:auto;max-height:420px}
.note{font-size:13px;color:#5b6475}.warn{color:#9a3412}
nav{font-size:13px;margin:6px 0 0}nav a{margin-right:10px;color:#2255aa;text-decoration:none}
"""



def new_figure(width=6.4, height=4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def png_base64(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def embed(figure, caption=None, alt=""):
    text = f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(figure)}">'
    if caption:
        text += f"<figcaption>{caption}</figcaption>"
    return text + "</figure>"


def fmt(value, digits=3):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def interval(entry, digits=3, stacked=False):
    if not isinstance(entry, dict):
        return fmt(entry, digits)
    text = fmt(entry.get("value"), digits)
    if entry.get("ci_low") is not None:
        text += ("<br>" if stacked else " ") + (
            f'<span class="note">[{fmt(entry["ci_low"], digits)}, {fmt(entry["ci_high"], digits)}]</span>')
    return text


_ORDER = ("accuracy", "subset_accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "sensitivity",
          "specificity", "ppv", "npv", "f1", "brier", "ece")


def metric_order(key):
    base = key.replace("macro_", "")
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), key)


def table(header, rows):
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
