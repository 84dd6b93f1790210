"""`prunescope models`: the built-in classifiers, whether their weights work offline, and how to
name any other."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the built-in models, whether their ImageNet weights are available "
                       "offline, and how to name any other classifier")
    parser.set_defaults(run=run)


def run(args) -> int:
    from core.models.loading import list_models
    from core.models.sources import HOW_TO_NAME

    infos = list_models()
    width = max(len(info.name) for info in infos)
    print(f"{'MODEL':<{width}}  OFFLINE  DESCRIPTION")
    for info in infos:
        print(f"{info.name:<{width}}  {'yes' if info.offline else 'no':<7}  {info.description}")
    missing = [info for info in infos if not info.offline]
    if missing:
        print("\nTo use a model marked 'no' offline, download its weights file into "
              f"{missing[0].weights_file.parent} (or pass --weights FILE):")
        for info in missing:
            print(f"  {info.name:<{width}}  {info.url}")
    print("\nAny other classifier, with --model SPEC (plus --weights, --labels, --input-size, "
          "--resize, --mean, --std, --gradcam-layer):")
    spec_width = max(len(spec) for spec, _ in HOW_TO_NAME)
    for spec, what in HOW_TO_NAME:
        print(f"  {spec:<{spec_width}}  {what}")
    return 0
