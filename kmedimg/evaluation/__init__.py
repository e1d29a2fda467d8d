"""kmedimg.evaluation: metrics with confidence intervals, explanations, reports, export."""
