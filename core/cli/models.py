"""`prunescope models`: which classifiers there are and whether their weights work offline."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models and whether their ImageNet weights are available offline")
    parser.set_defaults(run=run)


def run(args) -> int:
    from core.models import list_models

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
    return 0
