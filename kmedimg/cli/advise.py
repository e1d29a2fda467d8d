"""`kmedimg advise --num-images N --similarity high|low`: the review's §9 advice."""

from kmedimg.recipes import LARGE_DATASET, SIMILARITIES, advise


def add_parser(subparsers):
    """Adds `kmedimg advise` to the `kmedimg` command."""
    parser = subparsers.add_parser(
        "advise",
        help="recommend a fine-tuning recipe from dataset size and similarity (review §9)",
        description="Maps dataset size and similarity to the review's §9 category and a recipe.",
    )
    parser.add_argument("--num-images", type=int, required=True, help="training images")
    parser.add_argument(
        "--similarity", choices=SIMILARITIES, required=True,
        help="similarity of the images to the pretraining data",
    )
    parser.add_argument(
        "--large-threshold", type=int, default=LARGE_DATASET,
        help=f"images from which a dataset counts as large (default {LARGE_DATASET})",
    )
    parser.set_defaults(handler=_run)


def _run(args):
    advice = advise(args.num_images, args.similarity, args.large_threshold)
    print(advice)
    # The shipped file of the recipe, with the advised options on top.
    extra = [item for item in advice.overrides() if not item.startswith("recipe.name=")]
    print(f"\nRun it with:\n  kmedimg train recipes/{advice.recipe}.yaml --data DIR "
          + " ".join(f"--set {item}" for item in extra))
    return 0
