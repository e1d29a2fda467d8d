"""Throughput of `kmedimg predict` on TFRecords vs a plain `model.predict`, and of Grad-CAM.

Measures, on the same records and the same model (median of `--repeats` runs):

* baseline: `model.predict(load(...).map(images only))` — Keras' own loop over the
  kmedimg tf.data pipeline, probabilities only;
* kmedimg predict: `kmedimg.evaluation.prediction.predict_records` (ordered read with
  record ids, compiled forward pass) + writing the CSV, i.e. what `kmedimg predict
  RUN DATASET --split S --out F.csv` does after loading the model;
* Grad-CAM and Grad-CAM++ images/s (batches of 32), occlusion images/s.

Run:

    python benchmarks/evaluate_throughput.py                # 5,000 phantom records, 64 px
    python benchmarks/evaluate_throughput.py --backbone resnet50 --records 2000
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(),
                                                           "kmedimg-bench-predict"))
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from kmedimg.data.pipeline import load, read_manifest
    from kmedimg.data.synthetic import make_phantom_dataset
    from kmedimg import evaluation
    from kmedimg.evaluation.gradcam import METHODS
    from kmedimg.evaluation.prediction import predict_records
    from kmedimg.evaluation.predictions_csv import write_predictions_csv
    from kmedimg.models import build_classifier

    data_dir = f"{args.data_dir}-{args.records}-{args.image_size}"
    if not os.path.exists(os.path.join(data_dir, "dataset.json")):
        print(f"writing {args.records} phantom records to {data_dir} ...", flush=True)
        make_phantom_dataset(data_dir, num_images=args.records, image_size=args.image_size,
                             seed=0, val_fraction=0.0, test_fraction=0.0)
    manifest = read_manifest(data_dir)
    count = manifest.splits["train"].count
    size = args.image_size
    model = build_classifier(args.backbone, 1, (size, size, 1))
    print(f"{count} records, {size}x{size}x1, {args.backbone} ({model.count_params():,} parameters), "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs, TF {tf.__version__}; "
          f"{args.repeats} runs each", flush=True)

    def baseline():
        dataset = load(data_dir, "train", batch_size=args.batch_size).map(lambda x, y: x)
        probs = model.predict(dataset, verbose=0)
        assert len(probs) == count

    out = os.path.join(tempfile.mkdtemp(), "predictions.csv")

    def kmedimg_predict():
        ids, labels, probs = predict_records(model, data_dir, "train", args.batch_size)
        write_predictions_csv(out, ids, probs, manifest.task, manifest.class_names,
                              None, labels, id_column="id")
        assert len(ids) == count

    baseline()  # warm-up: tracing, thread pools, file cache
    kmedimg_predict()
    # Alternate the two so a change in machine load hits both; report the median of the
    # per-pair speed ratios as well as each side's median.
    base_all, ours_all = [], []
    for _ in range(args.repeats):
        base_all.append(_median_time(baseline, 1)[0])
        ours_all.append(_median_time(kmedimg_predict, 1)[0])
    base_seconds, ours_seconds = statistics.median(base_all), statistics.median(ours_all)
    ratios = [base / ours for base, ours in zip(base_all, ours_all)]
    print(f"model.predict over load(): {count / base_seconds:8.0f} predictions/s "
          f"(runs: {', '.join(f'{t:.2f}s' for t in base_all)})")
    print(f"kmedimg predict (+ids, CSV): {count / ours_seconds:8.0f} predictions/s "
          f"(runs: {', '.join(f'{t:.2f}s' for t in ours_all)})")
    print(f"ratio kmedimg predict / model.predict (speed, median of paired runs): "
          f"{statistics.median(ratios):.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")

    images = next(iter(load(data_dir, "train", batch_size=32)))[0].numpy()
    for method in METHODS:
        explainer = evaluation.GradCam(model, method=method)
        explainer(images)  # trace
        seconds, _ = _median_time(lambda: explainer(images), args.repeats)
        print(f"{method:>10}: {len(images) / seconds:8.1f} images/s (batch {len(images)}, "
              f"layer {explainer.layer.name})")
    few = images[:4]
    seconds, _ = _median_time(lambda: evaluation.occlusion_sensitivity(model, few), 1)
    print(f" occlusion: {len(few) / seconds:8.1f} images/s (patch {size // 8}, stride {size // 16})")
    forward = tf.function(lambda x: model(x, training=False))
    forward(images)
    seconds, _ = _median_time(lambda: forward(images).numpy(), args.repeats)
    print(f"   forward: {len(images) / seconds:8.1f} images/s (same batch, no gradients)")
    np.testing.assert_equal(len(images), 32)


if __name__ == "__main__":
    main()
