"""What distribution and XLA cost per training step on this machine.

1. Steps/s of the same model and global batch under the default strategy (baseline)
   vs MirroredStrategy over 2 logical CPUs vs MultiWorkerMirroredStrategy with 2
   workers on 127.0.0.1, printed as ratios to the baseline.
2. Per-step time with `jit_compile=True` vs off (baseline), after warm-up, for 3
   backbones.

Every configuration runs in fresh processes (`python -m kmedimg.distribute._distributed_run`)
on phantom TFRecords; figures are medians over `--repeats` runs.

    python benchmarks/strategy_overhead.py [--repeats 3] [--steps 30] [--quick]
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def free_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def run_processes(commands, timeout):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TF_CONFIG", None)
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        for command in commands
    ]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process in processes:
            remaining = max(1.0, deadline - time.monotonic())
            outputs.append(process.communicate(timeout=remaining)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    for process, output in zip(processes, outputs):
        if process.returncode != 0:
            raise RuntimeError(f"benchmark process failed ({process.returncode}):\n{output[-3000:]}")


def training(mode, data, out, args, **options):
    command = [
        sys.executable, "-m", "kmedimg.distribute._distributed_run", "--mode", mode, "--data", str(data),
        "--out", str(out), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--image-size", str(options.pop("image_size", args.image_size)),
        "--global-batch", str(args.global_batch),
    ]
    for key, value in options.items():
        if value is True:
            command.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def steps_per_second(mode, data, workdir, args, **options):
    measured = []
    for repeat in range(args.repeats):
        if mode == "multiworker":
            ports = ",".join(map(str, free_ports(2)))
            outs = [workdir / f"{mode}-{repeat}-{index}.json" for index in range(2)]
            run_processes(
                [
                    training(mode, data, outs[index], args, worker_index=index, ports=ports, **options)
                    for index in range(2)
                ],
                args.timeout,
            )
            # Both workers step in lockstep; take the slower one.
            measured.append(min(json.loads(out.read_text())["steps_per_second"] for out in outs))
        else:
            out = workdir / f"{mode}-{repeat}-{'-'.join(map(str, options.values()))}.json"
            run_processes([training(mode, data, out, args, **options)], args.timeout)
            measured.append(json.loads(out.read_text())["steps_per_second"])
    return statistics.median(measured), measured


def step_times(mode, data, workdir, args, **options):
    """Median (wall ms, CPU ms) per step after warm-up, pooled over the repeats."""
    walls, cpus = [], []
    for repeat in range(args.repeats):
        out = workdir / f"steps-{mode}-{repeat}-{'-'.join(map(str, options.values()))}.json"
        run_processes([training(mode, data, out, args, **options)], args.timeout)
        result = json.loads(out.read_text())
        walls += result["step_seconds"][args.warmup:]
        cpus += result["step_cpu_seconds"][args.warmup:]
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def jit_section(data, workdir, args):
    print(
        f"\n# jit_compile cost per step after warm-up: {args.jit_image_size} px, global batch "
        f"{args.global_batch}, default strategy, float32; median step wall time and process "
        "CPU time (all threads)"
    )
    for backbone in args.jit_backbones.split(","):
        off = step_times("single", data, workdir, args, backbone=backbone, image_size=args.jit_image_size)
        on = step_times("single", data, workdir, args, backbone=backbone, image_size=args.jit_image_size,
                        jit=True)
        print(
            f"{backbone:16s} jit off {off[0]:8.1f} ms ({off[1]:7.1f} ms CPU)   "
            f"jit on {on[0]:8.1f} ms ({on[1]:7.1f} ms CPU)   jit/no-jit {on[0] / off[0]:.2f}x wall, "
            f"{on[1] / off[1]:.2f}x CPU"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--strategy-backbone", default="mobilenetv2")
    parser.add_argument("--jit-backbones", default="mobilenetv2,efficientnetb0,resnet50")
    parser.add_argument("--jit-image-size", type=int, default=96)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 12 steps (smoke run)")
    parser.add_argument("--jit-only", action="store_true", help="skip the strategy comparison")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup = 1, 12, 3

    from kmedimg.data.synthetic import make_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        data = workdir / "phantoms"
        make_phantom_dataset(
            str(data), num_images=512, image_size=max(args.image_size, args.jit_image_size),
            val_fraction=0.0, test_fraction=0.0,
        )
        if args.jit_only:
            jit_section(data, workdir, args)
            return 0
        print(
            f"# strategy overhead: {args.strategy_backbone}, {args.image_size} px, global batch "
            f"{args.global_batch}, {args.steps} steps ({args.warmup} warm-up), median of {args.repeats}"
        )
        baseline, runs = steps_per_second("single", data, workdir, args, backbone=args.strategy_backbone)
        print(f"default strategy (baseline)        {baseline:7.2f} steps/s  1.00x   runs={fmt(runs)}")
        for mode, label in (("mirrored", "MirroredStrategy, 2 logical CPUs"),
                            ("multiworker", "MultiWorker, 2 workers localhost")):
            value, runs = steps_per_second(mode, data, workdir, args, backbone=args.strategy_backbone)
            print(f"{label:34s} {value:7.2f} steps/s  {value / baseline:.2f}x   runs={fmt(runs)}")

        jit_section(data, workdir, args)
    return 0


def fmt(values):
    return "[" + ", ".join(f"{value:.2f}" for value in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
